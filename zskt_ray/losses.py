"""Loss terms of ZSKT and of the KD+AT baseline, with every reduction written out.

Conventions follow the official code, which produced the published numbers:

* ``kl_divergence(s, t, reduction="mean")`` is ``F.kl_div(log_softmax(s), softmax(t), 'mean')``:
  the sum over batch and classes divided by **B*C**. ``'batchmean'`` divides by B only, which is C
  times larger and would shift the balance against the attention term that beta=250 was tuned for.
* ``attention_loss`` is the *squared* mean difference of L2-normalised spatial attention maps
  (the paper's Eq. 1 writes a non-squared norm; the code's form is what was run).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

KLReduction = Literal["mean", "batchmean", "sum"]
KL_REDUCTIONS: tuple[str, ...] = ("mean", "batchmean", "sum")


def kl_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    reduction: KLReduction = "mean",
) -> torch.Tensor:
    """KL(teacher || student) on softened distributions.

    ``reduction='mean'`` divides the elementwise sum by B*C (the paper's code); ``'batchmean'``
    by B; ``'sum'`` does not divide.
    """
    if reduction not in KL_REDUCTIONS:
        raise ValueError(f"kl reduction must be one of {KL_REDUCTIONS}, got {reduction!r}")
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    p_t = F.softmax(teacher_logits / temperature, dim=1)
    pointwise = F.kl_div(
        log_p_s, p_t, reduction="none"
    )  # p_t * (log p_t - log p_s), 0 where p_t = 0
    total = pointwise.sum()
    if reduction == "mean":
        return total / pointwise.numel()  # / (B*C): the official code's F.kl_div default
    if reduction == "batchmean":
        return total / pointwise.shape[0]
    return total


def attention_map(features: torch.Tensor) -> torch.Tensor:
    """Spatial attention of a (B, C, H, W) feature map: channel-mean of a^2, flattened, L2-normalised."""
    att = features.pow(2).mean(dim=1).flatten(1)
    return F.normalize(att, p=2, dim=1)


def attention_loss(student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    """One layer's AT term: mean over batch and H*W of the squared attention difference."""
    diff = attention_map(student_features) - attention_map(teacher_features)
    return diff.pow(2).mean()


def attention_losses(
    student_features: Sequence[torch.Tensor], teacher_features: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Sum over layers of :func:`attention_loss` (beta multiplies each layer's term).

    Networks without groups (MLPs return ``[]``) give a zero term; configs refuse ``beta > 0``
    for them, so the zero is never weighted.
    """
    if len(student_features) != len(teacher_features):
        raise ValueError(
            f"attention needs as many student as teacher groups, got "
            f"{len(student_features)} and {len(teacher_features)}"
        )
    if not student_features:
        return torch.zeros(())
    return torch.stack(
        [attention_loss(s, t) for s, t in zip(student_features, teacher_features, strict=True)]
    ).sum()


def kd_at_terms(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    student_features: Sequence[torch.Tensor],
    teacher_features: Sequence[torch.Tensor],
    alpha: float = 0.9,
    temperature: float = 4.0,
    beta: float = 1000.0,
) -> dict[str, torch.Tensor]:
    """Named terms of the few-shot KD+AT baseline (Zagoruyko & Komodakis, as in the paper's code).

    ``loss = (1-alpha)*CE + 2*alpha*T^2*KL_mean(T) + beta*sum_l AT_l``; the factor 2 and the
    /(B*C) KL reduction are the official code's.
    """
    ce = F.cross_entropy(student_logits, labels, reduction="mean")
    kl = kl_divergence(student_logits, teacher_logits, temperature=temperature, reduction="mean")
    at = attention_losses(student_features, teacher_features)
    loss = (1.0 - alpha) * ce + 2.0 * alpha * temperature**2 * kl + beta * at
    return {"loss": loss, "ce": ce, "kl": kl, "at": at}
