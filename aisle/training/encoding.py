"""Encoding texts with an encoder cut in two: a frozen bottom run once per text, a trainable top.

Why: on 2 CPU cores the encoder's forward passes are nearly all of `aisle train`'s time. The
fast preset fine-tunes only the top layers of each tower, so the embeddings and the layers below
the cut are the same function of a text before and after training, and the same in the query
tower, the item tower and the base model. Their outputs are computed once per distinct text
(`StateCache`), and then every training step, the zero-shot embeddings and the fine-tuned
embeddings run only the top layers. The served towers run the whole encoder; the split is exact
(`CutEncoder.check_against` compares it with TextTower's forward before training starts).

Tokenization is the serving one (aisle.tokenization.encode_batch with the manifest's buckets).
Cached states are trimmed to each text's tokens: padding never changes a masked encoder's output,
so batches are re-padded only to their own longest text.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn
from tqdm.auto import tqdm

from aisle.errors import CheckpointError
from aisle.modeling.towers import TextTower, mean_pool
from aisle.tokenization import Bucketing, encode_batch

#: Largest |difference| tolerated between the cut encoder and the whole encoder (float32).
SPLIT_TOLERANCE = 1e-4


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The transformer layers of a BERT-layout encoder (`embeddings` + `encoder.layer`)."""
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList) or not hasattr(model, "embeddings"):
        raise CheckpointError(
            f"model_type={model.config.model_type!r}: aisle train needs a BERT-layout encoder "
            "(modules `embeddings` and `encoder.layer`, as bert, roberta, electra have)"
        )
    return layers


@dataclass
class CutEncoder:
    """A Hugging Face encoder whose layers below `cut` are frozen; `top` trains the rest."""

    model: nn.Module
    cut: int

    @classmethod
    def freeze_below(cls, model: nn.Module, trainable_layers: int) -> CutEncoder:
        """Freeze everything but the top `trainable_layers` layers (at most all of them)."""
        layers = encoder_layers(model)
        cut = max(len(layers) - trainable_layers, 0)
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        for layer in layers[cut:]:
            for parameter in layer.parameters():
                parameter.requires_grad_(True)
        return cls(model, cut)

    def _run(self, layers: nn.ModuleList, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        from transformers.masking_utils import create_bidirectional_mask

        attention = create_bidirectional_mask(config=self.model.config, inputs_embeds=hidden, attention_mask=mask)
        for layer in layers:
            out = layer(hidden, attention)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden

    def bottom(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Token states after the frozen part: [B, L, hidden]."""
        hidden = self.model.embeddings(input_ids=input_ids)
        return self._run(encoder_layers(self.model)[: self.cut], hidden, mask)

    def top(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Frozen-part states -> L2-normalised mean-pooled embeddings [B, hidden]."""
        hidden = self._run(encoder_layers(self.model)[self.cut :], hidden, mask)
        return F.normalize(mean_pool(hidden, mask), p=2, dim=-1)

    def check_against(self, input_ids: torch.Tensor, mask: torch.Tensor) -> None:
        """Refuse encoders whose layers cannot be run on their own (the split would be wrong)."""
        was_training = self.model.training
        self.model.eval()
        with torch.inference_mode():
            whole = TextTower(self.model)(input_ids, mask)
            split = self.top(self.bottom(input_ids, mask), mask)
        self.model.train(was_training)
        error = float((whole - split).abs().max())
        if error > SPLIT_TOLERANCE:
            raise CheckpointError(
                f"model_type={self.model.config.model_type!r}: running its layers one by one differs from "
                f"its forward by {error:.2e} (limit {SPLIT_TOLERANCE:.0e}); aisle train cannot cache its lower layers"
            )


@dataclass
class StateCache:
    """Frozen-part token states of a list of texts, each [tokens, hidden], in the given order."""

    states: list[torch.Tensor]

    @classmethod
    def build(
        cls,
        encoder: CutEncoder,
        tokenizer: Tokenizer,
        texts: list[str],
        bucketing: Bucketing,
        *,
        batch_size: int,
        desc: str,
    ) -> StateCache:
        """Run the frozen part over `texts` (non-blank), longest-first batches to limit padding."""
        blank = [n for n, text in enumerate(texts) if not text.strip()]
        if blank:
            raise ValueError(f"text #{blank[0]} is blank: blank texts embed to zero and are never encoded")
        order = sorted(range(len(texts)), key=lambda n: -len(texts[n]))
        states: list[torch.Tensor | None] = [None] * len(texts)
        encoder.model.eval()
        with torch.inference_mode():
            for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", leave=False):
                rows = order[start : start + batch_size]
                ids, mask = encode_batch(tokenizer, [texts[n] for n in rows], bucketing)
                lengths = mask.sum(axis=1)
                width = int(lengths.max())
                hidden = encoder.bottom(torch.from_numpy(ids[:, :width]), torch.from_numpy(mask[:, :width]))
                for row, n, length in zip(hidden, rows, lengths.tolist()):
                    states[n] = row[:length].clone()
        return cls([s for s in states if s is not None])

    def __len__(self) -> int:
        return len(self.states)

    def batch(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded states [B, L, hidden] and mask [B, L] of the given rows."""
        picked = [self.states[n] for n in rows]
        hidden = nn.utils.rnn.pad_sequence(picked, batch_first=True)
        lengths = torch.tensor([s.shape[0] for s in picked])
        mask = (torch.arange(hidden.shape[1])[None, :] < lengths[:, None]).long()
        return hidden, mask

    def embed(self, encoder: CutEncoder, *, batch_size: int, desc: str) -> torch.Tensor:
        """Every cached text through `encoder`'s top, in float32, without grad: [N, hidden]."""
        order = sorted(range(len(self)), key=lambda n: -self.states[n].shape[0])
        out = torch.zeros(len(self), encoder.model.config.hidden_size)
        encoder.model.eval()
        with torch.inference_mode():
            for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", leave=False):
                rows = order[start : start + batch_size]
                out[rows] = encoder.top(*self.batch(rows))
        return out
