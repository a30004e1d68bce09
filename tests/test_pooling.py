"""Tower pooling against a reference computed by hand, mask handling, and training's cut encoder."""

from pathlib import Path

import numpy as np
import pytest
import torch

from aisle.modeling.loading import embed_texts
from aisle.modeling.towers import TextTower
from aisle.schema import ServingLimits
from aisle.tokenization import Bucketing, encode_batch, load_tokenizer
from aisle.training.encoding import CutEncoder, StateCache

TEXTS = [
    "running shoes",
    "Nike Pegasus 40 Men's Running Shoes, Black, Size 10 | Nike | Shoes > Running Shoes | color: black",
    "wireless earbuds noise cancelling",
]
BUCKETING = Bucketing(ServingLimits().item_buckets)


@pytest.fixture(scope="module")
def tower(base_model_dir: Path) -> TextTower:
    return TextTower.from_pretrained(base_model_dir).eval()


@pytest.fixture(scope="module")
def tokenizer(base_model_dir: Path):
    return load_tokenizer(base_model_dir, BUCKETING.max_length)


def test_tower_equals_hand_mean_pooled_automodel_output(base_model_dir: Path, tower: TextTower, tokenizer) -> None:
    from transformers import AutoModel

    ids, mask = encode_batch(tokenizer, TEXTS, BUCKETING)
    model = AutoModel.from_pretrained(str(base_model_dir)).eval()
    with torch.inference_mode():
        hidden = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state
        got = tower(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    for row, length in enumerate(mask.sum(axis=1)):
        reference = hidden[row, :length].numpy().astype(np.float64).mean(axis=0)
        reference /= np.linalg.norm(reference)
        np.testing.assert_allclose(got[row], reference, atol=1e-5)


def test_padded_batch_equals_each_text_alone(tower: TextTower, tokenizer) -> None:
    batch = embed_texts(tower, tokenizer, TEXTS, BUCKETING)
    for row, text in enumerate(TEXTS):
        alone = embed_texts(tower, tokenizer, [text], BUCKETING)
        torch.testing.assert_close(batch[row : row + 1], alone, atol=1e-5, rtol=0)


def test_blank_text_embeds_to_the_zero_vector(tower: TextTower, tokenizer) -> None:
    embeddings = embed_texts(tower, tokenizer, ["", "running shoes", "   "], BUCKETING)
    assert torch.count_nonzero(embeddings[0]) == 0 and torch.count_nonzero(embeddings[2]) == 0
    assert embeddings[1].norm() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("trainable_layers", [1, 6])
def test_cut_encoder_with_cached_lower_layers_equals_the_whole_tower(
    base_model_dir: Path, tower: TextTower, tokenizer, trainable_layers: int
) -> None:
    encoder = CutEncoder.freeze_below(TextTower.from_pretrained(base_model_dir).encoder, trainable_layers)
    cache = StateCache.build(encoder, tokenizer, TEXTS, BUCKETING, batch_size=2, desc="test")
    torch.testing.assert_close(
        cache.embed(encoder, batch_size=2, desc="test"),
        embed_texts(tower, tokenizer, TEXTS, BUCKETING),
        atol=1e-5,
        rtol=0,
    )
    frozen = [name for name, p in encoder.model.named_parameters() if not p.requires_grad]
    assert all(not name.startswith(f"encoder.layer.{6 - trainable_layers}.") for name in frozen)
    assert any(name.startswith("embeddings.") for name in frozen)
