"""Tasks on the MobileNetV2 backbone (`config.task`); see `mnv2_jax.tasks.base.Task`."""

from __future__ import annotations

import importlib
from typing import Any

# Task name -> module path and class name; modules load when a task is asked for.
TASKS: dict[str, tuple[str, str]] = {
    "classification": ("mnv2_jax.tasks.classification", "ClassificationTask"),
    "detection": ("mnv2_jax.tasks.detection", "DetectionTask"),
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


# Task name -> a module that counts the task's head without importing JAX (`mnv2 info --task`):
# `DEFAULT_NUM_CLASSES`, `DEFAULT_RESOLUTION`, `HEAD_TYPES`, `count(arch, resolution, num_classes, head_type)` ->
# (whole network, head alone) as `accounting.Counts`, and `extra_info(resolution)` -> dict.
HEAD_COUNTS: dict[str, str] = {"detection": "mnv2_jax.tasks.detection.counts"}


def head_counts(name: str):
    if name not in HEAD_COUNTS:
        raise ValueError(f"--task: {name!r} has no head to count; tasks with one: {tuple(HEAD_COUNTS)}")
    return importlib.import_module(HEAD_COUNTS[name])
