"""The two training losses: InfoNCE for the towers, a listwise softmax for the fusion head."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(
    queries: torch.Tensor, items: torch.Tensor, false_negatives: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Contrastive loss of B queries against M >= B items whose first B are their positives.

    queries [B, D] and items [M, D] are L2-normalised, so the logits are cosines / temperature.
    Every other item is a negative (in-batch positives of other queries, then hard negatives),
    except where `false_negatives` [B, M] is True: items known to be relevant to that query too,
    which would otherwise be pushed away from it.
    """
    batch = queries.shape[0]
    logits = queries @ items.T / temperature
    logits = logits.masked_fill(false_negatives, float("-inf"))
    return F.cross_entropy(logits, torch.arange(batch, device=queries.device))


def listwise_softmax(scores: torch.Tensor, gains: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """ListNet loss: cross-entropy from gains (normalised per list) to the softmax of the scores.

    scores, gains [S, N] and valid [S, N] (False on padding). Every list needs a positive gain.
    A purchase (gain 2) pulls twice as much probability mass as a click (gain 1), so the head
    learns to put purchases above clicks above the rest, the order nDCG rewards.
    """
    log_p = F.log_softmax(scores.masked_fill(~valid, float("-inf")), dim=-1)
    target = gains * valid / (gains * valid).sum(dim=-1, keepdim=True)
    return -(target * log_p.masked_fill(~valid, 0.0)).sum(dim=-1).mean()
