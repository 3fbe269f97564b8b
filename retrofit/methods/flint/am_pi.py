"""FLINT's AM+PI: activation maximisation of one attribute, started from a faded real image.

x₀ = α·x (the partial initialisation keeps the picture recognisable); then Adam maximises
φ_j(x) − λ_tv·TV(x) − λ_range·(distance outside [low, high])², with the learning rate halved
after each round (ALGORITHMS §9.1). Deterministic (no random jitter) and stopped after
`max_seconds` so a report cannot hang on it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from retrofit.errors import ConfigError


@dataclass(frozen=True)
class AmPiSettings:
    alpha: float = 0.4  # fading of the start image (the reference uses 0.2-0.6)
    rounds: int = 3
    steps: int = 20  # per round
    lr: float = 0.05  # halved after each round
    tv: float = 0.05
    range_weight: float = 1.0
    low: float = 0.0
    high: float = 1.0
    max_seconds: float = 10.0

    def __post_init__(self) -> None:
        if not 0 < self.alpha <= 1:
            raise ConfigError(f"AM+PI alpha must be in (0, 1], got {self.alpha!r}.")
        if self.rounds < 1 or self.steps < 1 or self.lr <= 0 or self.max_seconds <= 0:
            raise ConfigError("AM+PI rounds, steps, lr and max_seconds must be positive.")
        if self.tv < 0 or self.range_weight < 0 or not self.low < self.high:
            raise ConfigError("AM+PI penalties must be >= 0 and low < high.")


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between neighbouring pixels (B, C, H, W)."""
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (
        x[..., :, 1:] - x[..., :, :-1]
    ).abs().mean()


def am_pi(
    activation: torch.nn.Module | object,
    image: torch.Tensor,
    feature: int,
    settings: AmPiSettings = AmPiSettings(),
) -> tuple[torch.Tensor, dict[str, float]]:
    """(the optimised (C, H, W) image, {"start", "end", "steps"}) for `activation`, a callable
    images (B, C, H, W) -> (B, n_features), e.g. InterpretableModel.concept_activations."""
    x = (settings.alpha * image.detach().float()).unsqueeze(0).clone().requires_grad_(True)
    with torch.no_grad():
        start_value = float(activation(x)[0, feature])
    deadline = time.perf_counter() + settings.max_seconds
    steps = 0
    lr = settings.lr
    for _ in range(settings.rounds):
        optimiser = torch.optim.Adam([x], lr=lr)
        for _ in range(settings.steps):
            if time.perf_counter() > deadline:
                break
            value = activation(x)[0, feature]
            outside = (settings.low - x).clamp_min(0) + (x - settings.high).clamp_min(0)
            loss = (
                -value
                + settings.tv * total_variation(x)
                + settings.range_weight * outside.pow(2).mean()
            )
            # the gradient of the image only: the model's parameters keep no .grad
            (x.grad,) = torch.autograd.grad(loss, x)
            optimiser.step()
            steps += 1
        lr /= 2
    result = x.detach()[0].clamp(settings.low, settings.high)
    with torch.no_grad():
        end_value = float(activation(result[None])[0, feature])
    return result, {"start": start_value, "end": end_value, "steps": steps}
