"""Eval-split accuracy: the per-batch sums of `loss.eval_sums`, added on the device."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


class ClassificationEvaluator:
    """Loss, top-1 and top-5 over every real example of the eval split."""

    def __init__(self) -> None:
        self.totals: Any = None

    def add(self, sums: dict[str, jax.Array]) -> None:
        self.totals = sums if self.totals is None else jax.tree.map(jnp.add, self.totals, sums)

    def result(self) -> dict[str, float]:
        if self.totals is None:
            raise ValueError("eval split: no batches (is the split empty?)")
        totals = jax.device_get(self.totals)
        count = float(totals["count"])
        return {
            "loss": float(totals["loss"]) / count,
            "top1": float(totals["top1"]) / count,
            "top5": float(totals["top5"]) / count,
            "examples": int(count),
        }
