"""Loss terms of ZSKT and of the KD+AT baseline, with every reduction written out.

Conventions follow the official code, which produced the published numbers:

* ``kl_divergence(s, t, reduction="mean")`` is ``F.kl_div(log_softmax(s), softmax(t), 'mean')``:
  the sum over batch and classes divided by **B*C**. ``'batchmean'`` divides by B only, which is C
  times larger and would shift the balance against the attention term that beta=250 was tuned for.
* ``attention_loss`` is the *squared* mean difference of L2-normalised spatial attention maps
  (the paper's Eq. 1 writes a non-squared norm; the code's form is what was run).

The generator objectives of other data-free methods (section 9 of the method doc) follow their own
official code the same way:

* ``l1_discrepancy`` is DFAD's mean absolute error between teacher and student logits, divided by
  **B*C** (``F.l1_loss``'s default in the DFAD scripts), on raw logits (no temperature).
* ``bn_statistics_term`` is DeepInversion's per-layer feature-distribution term: the L2 norm (not
  squared) of the difference of the batch mean from the running mean, plus the L2 norm of the
  difference of the *biased* batch variance from the running variance, of a batch-norm layer's
  input; :class:`BatchNormStatistics` collects it from every ``BatchNorm2d`` of a network with
  forward hooks, and the prior is the unweighted sum over layers (:func:`sum_in_order`).
* ``one_hot_term`` and ``information_entropy_term`` are DAFL's: cross-entropy of the teacher's
  logits against their own argmax (mean over the batch), and sum_c p_c log10 p_c of the teacher's
  batch-mean softmax (base-10 logarithm, as in DAFL's code).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

KLReduction = Literal["mean", "batchmean", "sum"]
KL_REDUCTIONS: tuple[str, ...] = ("mean", "batchmean", "sum")
# What the generator maximises between teacher and student (``none``: nothing; the generator then
# learns only from prior terms, or not at all), and what the student minimises.
ADVERSARIAL_DISCREPANCIES: tuple[str, ...] = ("kl", "l1", "none")
STUDENT_DISCREPANCIES: tuple[str, ...] = ("kl", "l1")


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


# ---------------------------------------------------------------- other methods' objectives


def l1_discrepancy(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """DFAD's model discrepancy: mean absolute error of the logits, the sum divided by B*C.

    Raw logits, no softmax and no temperature (Fang et al., 2019; ``F.l1_loss`` with its default
    reduction in the official scripts). The student minimises it, the generator maximises it.
    """
    diff = (student_logits - teacher_logits).abs()
    return diff.sum() / diff.numel()  # / (B*C)


def bn_statistics_term(
    features: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor
) -> torch.Tensor:
    """DeepInversion's term for one batch-norm layer fed ``features`` (B, C, ...).

    ``||mu - running_mean||_2 + ||var - running_var||_2`` with mu and var the per-channel mean and
    *biased* variance of the input over batch and positions: plain L2 norms over channels, not
    squared (Yin et al., 2020, Eq. 4 and the official hook). Computed in fp32 at least (half
    precision inputs of an autocast forward are promoted).
    """
    dtype = torch.promote_types(features.dtype, torch.float32)
    x = features.to(dtype)
    dims = [0, *range(2, x.dim())]  # every axis but the channels
    mean = x.mean(dim=dims)
    var = x.var(dim=dims, correction=0)  # biased, as the batch norm itself normalises
    return torch.linalg.vector_norm(running_var.to(dtype) - var) + torch.linalg.vector_norm(
        running_mean.to(dtype) - mean
    )


class BatchNormStatistics:
    """The batch-norm statistics prior of a network: forward hooks on each of its ``BatchNorm2d``.

    Inside :meth:`recording`, every forward pass of a hooked layer appends that layer's
    :func:`bn_statistics_term` on its input to the yielded list; the hooks are removed on exit, so
    other forward passes of the network cost nothing. The network is expected in eval mode: its
    running statistics are the targets and are not updated.
    """

    def __init__(self, net: nn.Module) -> None:
        self.layers = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
        if not self.layers:
            raise ValueError(
                f"the batch-norm statistics prior needs batch-norm layers; "
                f"{type(net).__name__} has none"
            )

    @contextlib.contextmanager
    def recording(self) -> Iterator[list[torch.Tensor]]:
        terms: list[torch.Tensor] = []

        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], _output: object) -> None:
            terms.append(bn_statistics_term(inputs[0], module.running_mean, module.running_var))

        handles = [layer.register_forward_hook(hook) for layer in self.layers]
        try:
            yield terms
        finally:
            for h in handles:
                h.remove()


def sum_in_order(terms: Sequence[torch.Tensor]) -> torch.Tensor:
    """``terms[0] + terms[1] + ...``, left to right: the rounding of a Python ``sum`` over layers
    (DeepInversion's), which a pairwise ``torch.stack(...).sum()`` does not reproduce in fp32."""
    if not terms:
        raise ValueError("sum_in_order needs at least one term")
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


def one_hot_term(teacher_logits: torch.Tensor) -> torch.Tensor:
    """DAFL's one-hot loss: cross-entropy of the teacher against its own argmax, mean over B.

    The argmax is a constant target; gradients reach the images through the logits only.
    """
    targets = teacher_logits.detach().argmax(dim=1)
    return F.cross_entropy(teacher_logits, targets, reduction="mean")


def information_entropy_term(teacher_logits: torch.Tensor) -> torch.Tensor:
    """DAFL's information-entropy loss: sum_c p_c log10 p_c of the batch-mean teacher softmax.

    Minimising it maximises the entropy of the class frequencies, so the generator covers the
    classes evenly. Base-10 logarithm and no normalisation, as in DAFL's official code; a class
    with p_c = 0 contributes 0 (0 log 0 = 0), where the official code would give NaN.
    """
    p = F.softmax(teacher_logits, dim=1).mean(dim=0)
    positive = p > 0
    safe = torch.where(positive, p, torch.ones_like(p))  # keeps log10 and its gradient finite
    return torch.where(positive, p * torch.log10(safe), torch.zeros_like(p)).sum()
