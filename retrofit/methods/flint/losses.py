"""FLINT's training losses (ALGORITHMS §9.1): output fidelity, input fidelity, conciseness/diversity.

Pure tensor functions, so each can be checked on inputs with a known answer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from retrofit.errors import ConfigError

_EPS = 1e-12


def entropy(p: torch.Tensor) -> torch.Tensor:
    """−Σ p log p over the last dimension (0 for a one-hot p, log J for a uniform one)."""
    return -(p * p.clamp_min(_EPS).log()).sum(dim=-1)


def output_fidelity(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """L_of = CE(softmax(f(x)/T) ‖ softmax(g(x))), batch mean: g learns to decide like f.

    Equals cross-entropy with the teacher's class when its softmax is one-hot.
    """
    if student.shape != teacher.shape:
        raise ConfigError(
            f"student logits {tuple(student.shape)} and teacher logits {tuple(teacher.shape)} "
            "must have the same shape."
        )
    target = F.softmax(teacher.float() / temperature, dim=1)
    return -(target * F.log_softmax(student, dim=1)).sum(dim=1).mean()


def input_fidelity(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L_if = mean squared error of the decoder's reconstruction of the hooked features."""
    return F.mse_loss(reconstruction, target)


def conciseness_diversity(phi: torch.Tensor, l1: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(entropy part, L1 part) of L_cd = −𝓔(mean_batch Φ̃) + mean_i 𝓔(Φ̃(x_i)) + η‖Φ‖₁.

    𝓔 is the entropy of a softmax over the J attributes, Φ̃ = |Φ|. The per-image term makes each
    decision rest on few attributes, the batch-mean term keeps every attribute in use. The L1
    part is η times the batch mean of ‖Φ(x)‖₁; returned apart so each can have its schedule.
    """
    if phi.ndim != 2:
        raise ConfigError(f"attributes must be (batch, J), got shape {tuple(phi.shape)}.")
    magnitude = phi.abs()
    per_image = entropy(F.softmax(magnitude, dim=1)).mean()
    batch = entropy(F.softmax(magnitude.mean(dim=0), dim=0))
    return per_image - batch, l1 * magnitude.sum(dim=1).mean()
