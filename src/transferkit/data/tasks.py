"""Several tasks' data for one model: :class:`TaskSet`.

A :class:`TaskSet` maps task names to datasets (each with its own classes); the training engine draws
its batches task by task (:class:`~transferkit.engine.batches.TaskBatches`) and scores a multi-head
model on each task with that task's head. How tasks are drawn:

* ``"all"``: every step takes a batch of every task (what loss weighting by gradients and gradient
  surgery need); an epoch is one pass over the largest task, smaller ones cycle;
* ``"proportional"`` / ``"uniform"`` / ``"temperature"``: every step takes a batch of one task, drawn
  with probability proportional to ``n_t ** (1 / T)`` (T = 1, infinity, ``temperature``); an epoch has
  as many steps as one pass over all the tasks' examples takes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from transferkit.errors import ConfigError, DataError

__all__ = ["SAMPLING", "TaskSet", "task_probabilities"]

SAMPLING = ("all", "proportional", "uniform", "temperature")


def task_probabilities(sizes: Mapping[str, int], sampling: str, temperature: float = 2.0) -> dict[str, float]:
    """Each task's chance of being drawn for a step: ``n_t ** (1/T) / sum_j n_j ** (1/T)`` with T = 1
    (``"proportional"``), infinity (``"uniform"``: equal) or ``temperature``; ``"all"``: every task every
    step (1 each)."""
    if sampling not in SAMPLING:
        raise ConfigError(f"sampling must be one of {', '.join(SAMPLING)}, got {sampling!r}")
    if sampling == "all":
        return {t: 1.0 for t in sizes}
    if sampling == "temperature" and not float(temperature) > 0:
        raise ConfigError(f"temperature must be > 0, got {temperature!r}")
    power = {"proportional": 1.0, "uniform": 0.0, "temperature": 1.0 / float(temperature)}[sampling]
    mass = {t: float(n) ** power for t, n in sizes.items()}
    total = sum(mass.values())
    return {t: m / total for t, m in mass.items()}


class TaskSet:
    """Task name -> dataset, with how training draws batches from them.

    Args:
        tasks: Task name -> dataset (a :class:`~transferkit.data.TensorDataset` of that task's examples
            and labels); at least one.
        sampling: ``"all"`` (default), ``"proportional"``, ``"uniform"`` or ``"temperature"`` (see the
            module docstring).
        temperature: T of ``"temperature"`` sampling.
    """

    def __init__(self, tasks: Mapping[str, Any], sampling: str = "all", temperature: float = 2.0) -> None:
        if not tasks:
            raise ConfigError("a TaskSet needs at least one task")
        for name, data in tasks.items():
            if not isinstance(name, str) or not name or "." in name or "/" in name:
                raise ConfigError(f"task names must be non-empty strings without '.' or '/', got {name!r}")
            if len(data) == 0:
                raise DataError(f"task {name!r} has no examples; give each task a non-empty dataset")
        self.tasks = dict(tasks)
        self.probabilities = task_probabilities({t: len(d) for t, d in self.tasks.items()}, sampling,
                                                temperature)
        self.sampling, self.temperature = sampling, float(temperature)
        self.name = "+".join(self.tasks)

    def __len__(self) -> int:
        return sum(len(d) for d in self.tasks.values())

    def __iter__(self) -> Iterator[str]:
        return iter(self.tasks)

    def __getitem__(self, task: str) -> Any:
        return self.tasks[task]

    def items(self) -> list[tuple[str, Any]]:
        return list(self.tasks.items())

    def map(self, fn: Callable[[Any], Any]) -> TaskSet:
        """The same tasks and sampling, each dataset replaced by ``fn(dataset)``."""
        return TaskSet({t: fn(d) for t, d in self.tasks.items()}, self.sampling, self.temperature)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{t}: {len(d)}" for t, d in self.tasks.items())
        return f"TaskSet({sizes}; sampling={self.sampling!r})"
