"""What a task is: the head on the backbone, its input pipeline, its loss and its evaluator.

The train step and the loop (`mnv2_jax.train`) are written against this interface only, so a
task plugs in without touching them: `config.task` names it and `mnv2_jax.tasks.get_task`
builds it from the resolved config.

* `dataset_info()`, `train_iterator(start_step)`, `eval_iterator()`: the input pipeline. Batches
  are dicts of per-process NumPy arrays; eval batches carry a float `mask` (1 real, 0 padding).
* `model(num_classes)`: the Flax module (backbone + head); `count(num_classes)` its multiply-adds
  and parameters from the architecture spec, as `mnv2 info` prints them.
* `loss(outputs, batch) -> (loss, metrics)`: the mean training loss of a batch and a dict of
  per-batch metric means (`train/<name>` in metrics.jsonl); `train_metrics` names them.
* `eval_outputs(model, variables, batch)`: what one eval batch contributes (jit-compiled), and
  `evaluator()`: an `Evaluator` that accumulates those contributions over the eval split and
  returns the eval metrics (`eval/<name>`).
* `weight_decay_rule(path)`: True/False where the task's head decides whether a parameter gets
  L2 weight decay, None to leave it to the recipe's rule (`train.optim.decays`).
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from typing import Any, ClassVar, Protocol

import numpy as np

Batch = dict[str, np.ndarray]


class Evaluator(Protocol):
    def add(self, outputs: Any) -> None: ...

    def result(self) -> dict[str, float]: ...


class Task(abc.ABC):
    """One kind of training on the MobileNetV2 backbone; built from a run's resolved config."""

    name: ClassVar[str]
    # Names of the per-batch metrics `loss` returns besides the loss itself.
    train_metrics: ClassVar[tuple[str, ...]]
    # The eval metric a sweep's plots and W&B optimise by default.
    main_metric: ClassVar[str]

    def __init__(self, config: Any):
        self.config = config

    @abc.abstractmethod
    def dataset_info(self) -> Any: ...

    @abc.abstractmethod
    def train_iterator(self, start_step: int = 0) -> Iterator[Batch]: ...

    @abc.abstractmethod
    def eval_iterator(self) -> Iterator[Batch]: ...

    @abc.abstractmethod
    def model(self, num_classes: int, **overrides: Any) -> Any: ...

    @abc.abstractmethod
    def count(self, num_classes: int) -> dict[str, int]: ...

    @abc.abstractmethod
    def loss(self, outputs: Any, batch: dict[str, Any]) -> tuple[Any, dict[str, Any]]: ...

    @abc.abstractmethod
    def eval_outputs(self, model: Any, variables: dict, batch: dict[str, Any]) -> Any: ...

    @abc.abstractmethod
    def evaluator(self) -> Evaluator: ...

    def weight_decay_rule(self, path: tuple[str, ...]) -> bool | None:
        """Whether the parameter at `path` gets weight decay; None: the recipe's rule decides."""
        return None
