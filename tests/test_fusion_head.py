"""The fusion head computes its first layer factored; it must be the same function as the plain MLP."""

from __future__ import annotations

import torch

from aisle.modeling.fusion import FusionHead, FusionHeadConfig


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The textbook cosine along the last dim, 0 where either side is the zero vector."""
    return (a * b).sum(-1, keepdim=True) / (a.norm(dim=-1, keepdim=True) * b.norm(dim=-1, keepdim=True)).clamp(min=1e-6)


def concatenated_first_layer(
    head: FusionHead, q: torch.Tensor, u: torch.Tensor, i: torch.Tensor, f: torch.Tensor
) -> torch.Tensor:
    """The head's definition: nn.Linear over [q, i, q*i, |q-i|, u*i, cos(q,i), cos(u,i), features]."""
    qe, ue = q.unsqueeze(1).expand_as(i), u.unsqueeze(1).expand_as(i)
    x = torch.cat([qe, i, qe * i, (qe - i).abs(), ue * i, cosine(qe, i), cosine(ue, i), head.normalizer(f)], dim=-1)
    return head.mlp[0](x)


def test_factored_first_layer_equals_the_linear_over_concatenated_features() -> None:
    torch.manual_seed(0)
    head = FusionHead(FusionHeadConfig(embedding_dim=24, hidden_dims=(16, 8))).eval()
    q, u = torch.randn(3, 24), torch.randn(3, 24)
    u[1] = 0.0  # a request without history: the zero user vector
    q[2] = 0.0  # a recommendation: the zero query vector
    i = torch.randn(3, 7, 24)
    f = torch.rand(3, 7, len(head.config.feature_names)) * 100
    f[0, 2, 1] = float("nan")  # an unknown feature
    expected = concatenated_first_layer(head, q, u, i, f)
    assert torch.allclose(head.first_layer(q, u, i, f), expected, atol=1e-5, rtol=1e-5)
    scores = head(q, u, i, f)
    assert scores.shape == (3, 7)
    assert torch.allclose(scores, head.mlp[1:](expected).squeeze(-1), atol=1e-5, rtol=1e-5)


def test_factored_head_trains_the_same_weights() -> None:
    """Gradients reach every block of the first layer's weight, as in the concatenated form."""
    torch.manual_seed(1)
    head = FusionHead(FusionHeadConfig(embedding_dim=8, hidden_dims=(4,))).eval()  # no dropout noise
    q, u, i = torch.randn(2, 8), torch.randn(2, 8), torch.randn(2, 5, 8)
    f = torch.rand(2, 5, len(head.config.feature_names))
    head(q, u, i, f).sum().backward()
    factored = head.mlp[0].weight.grad.clone()
    head.zero_grad()
    head.mlp[1:](concatenated_first_layer(head, q, u, i, f)).sum().backward()
    assert torch.allclose(factored, head.mlp[0].weight.grad, atol=1e-5)
