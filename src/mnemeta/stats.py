"""Summary statistics of evaluation results, shared by every recipe and task (no imports above)."""

from __future__ import annotations

import math

import torch

__all__ = ["mean_ci95"]


def mean_ci95(values: torch.Tensor) -> tuple[float, float]:
    """Mean and the half-width of its normal 95% confidence interval, 1.96·s/√n."""
    n = values.numel()
    mean = float(values.mean())
    std = float(values.std(unbiased=True)) if n > 1 else 0.0
    return mean, 1.96 * std / math.sqrt(n) if n > 1 else 0.0
