"""Text towers: a BERT-family encoder, mean pooling over the attention mask, L2 normalisation."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from aisle.errors import CheckpointError

#: model_type values of encoder-only BERT-family models whose last_hidden_state we pool.
BERT_FAMILY = frozenset(
    {"bert", "roberta", "xlm-roberta", "distilbert", "electra", "camembert", "mpnet", "deberta-v2", "albert"}
)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average the token states the mask keeps; an all-zero mask pools to the zero vector."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def check_bert_dir(model_dir: str | Path) -> dict:
    """Read config.json and refuse anything that is not a BERT-family encoder, naming the field."""
    config_path = Path(model_dir) / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{model_dir}: not a Hugging Face model directory (no config.json)")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{config_path}: invalid JSON: {e}") from e
    model_type = config.get("model_type")
    if model_type not in BERT_FAMILY:
        raise CheckpointError(
            f"{config_path}: model_type={model_type!r} is not a BERT-family encoder "
            f"(expected one of {sorted(BERT_FAMILY)})"
        )
    return config


class TextTower(nn.Module):
    """input_ids, attention_mask -> L2-normalised mean-pooled embedding [B, hidden]."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    @property
    def embedding_dim(self) -> int:
        return int(self.encoder.config.hidden_size)

    @classmethod
    def from_pretrained(cls, model_dir: str | Path) -> TextTower:
        from transformers import AutoModel

        check_bert_dir(model_dir)
        try:
            encoder = AutoModel.from_pretrained(str(model_dir))
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{model_dir}: cannot load encoder weights: {e}") from e
        return cls(encoder)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return F.normalize(mean_pool(hidden, attention_mask), p=2, dim=-1)
