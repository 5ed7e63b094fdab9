"""Tasks on the MobileNetV2 backbone (`config.task`); see `mnv2_jax.tasks.base.Task`."""

from __future__ import annotations

import importlib
from typing import Any

# Task name -> module path and class name; modules load when a task is asked for.
TASKS: dict[str, tuple[str, str]] = {
    "classification": ("mnv2_jax.tasks.classification", "ClassificationTask"),
    "segmentation": ("mnv2_jax.tasks.segmentation", "SegmentationTask"),
}


def task_class(name: str) -> type:
    if name not in TASKS:
        raise ValueError(f"config key 'task': must be one of {tuple(TASKS)}, got {name!r}")
    module, cls = TASKS[name]
    return getattr(importlib.import_module(module), cls)


def get_task(config: Any):
    """The task `config.task` names, built from `config` (default: classification)."""
    return task_class(config.get("task", "classification"))(config)
