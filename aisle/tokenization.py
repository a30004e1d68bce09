"""Tokenization with length buckets, shared by training, export, the Triton tokenizer model and tests.

Why buckets: Triton's dynamic batcher merges only requests of identical shape. Padding every
request to the smallest declared bucket that fits its longest text keeps most of the speed of
no padding while letting same-bucket requests merge.

Where no batcher needs same shapes (a batch already formed, run in-process by onnxruntime), a
batch is cut to its longest text (`longest_width`): padding sits on the right and is masked out of
attention and pooling, so the extra columns change no embedding, only the cost.

Why empty text gets an all-zero mask: mean pooling over an empty mask yields the zero vector, so
an empty query (pure recommendation) encodes to "no query" in PyTorch, ONNX and Triton alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from aisle.errors import CheckpointError


@dataclass(frozen=True)
class Bucketing:
    """Length buckets (ascending); the largest is also the truncation length."""

    buckets: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.buckets or list(self.buckets) != sorted(set(self.buckets)) or self.buckets[0] < 2:
            raise ValueError(f"buckets must be ascending distinct lengths >= 2, got {self.buckets}")

    @property
    def max_length(self) -> int:
        return self.buckets[-1]

    def bucket_for(self, length: int) -> int:
        """The smallest bucket that holds `length` tokens (texts are truncated to the largest)."""
        for bucket in self.buckets:
            if length <= bucket:
                return bucket
        return self.max_length


def load_tokenizer(model_dir: str | Path, max_length: int) -> Tokenizer:
    """Load the fast tokenizer of a Hugging Face model directory, truncating, never padding.

    Directories saved without tokenizer.json (vocab.txt only) are converted through transformers,
    which is only needed at training time; checkpoints aisle writes always carry tokenizer.json.
    """
    model_dir = Path(model_dir)
    path = model_dir / "tokenizer.json"
    if path.is_file():
        tokenizer = Tokenizer.from_file(str(path))
    else:
        try:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(model_dir), use_fast=True).backend_tokenizer
        except (OSError, ValueError, ImportError) as e:
            raise CheckpointError(f"{model_dir}: no usable tokenizer (tokenizer.json or vocab.txt): {e}") from e
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length)
    return tokenizer


def encode_batch(tokenizer: Tokenizer, texts: list[str], bucketing: Bucketing) -> tuple[np.ndarray, np.ndarray]:
    """Tokenize `texts` in one call and pad them to the bucket of the longest.

    Returns int64 `input_ids` and `attention_mask` of shape [len(texts), bucket]. Blank texts
    (empty or whitespace only) keep their special tokens in `input_ids` but get an all-zero mask.
    """
    encodings = tokenizer.encode_batch(texts)
    longest = max((len(e.ids) for e in encodings), default=1)
    width = bucketing.bucket_for(longest)
    pad_id = tokenizer.token_to_id("[PAD]") or 0
    ids = np.full((len(texts), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(texts), width), dtype=np.int64)
    for row, (text, encoding) in enumerate(zip(texts, encodings)):
        n = min(len(encoding.ids), width)
        ids[row, :n] = encoding.ids[:n]
        if text.strip():
            mask[row, :n] = 1
    return ids, mask


def longest_width(mask: np.ndarray) -> int:
    """Columns a right-padded batch needs: its longest text's token count (at least one column,
    so a batch of blank texts, all-zero masks, still has a shape; it encodes to zero vectors)."""
    return max(int(mask.sum(axis=1).max(initial=0)), 1)
