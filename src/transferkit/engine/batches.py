"""Where training batches come from: the data side of the one loop.

The loop consumes :class:`Examples` (inputs, labels, dataset positions, domain labels); it never
builds them. Three sources produce them, all with the same per-epoch order for a given seed, so a
run gives the same batches whichever path carries the data and a resumed run repeats them:

* :class:`TensorBatches` -- the fast path for an in-memory :class:`~transferkit.data.TensorDataset`:
  a seeded permutation per epoch, each batch one indexing of the tensors (no per-example Python).
* :class:`LoaderBatches` -- any map-style ``torch.utils.data.Dataset`` whose items are ``(x, y)``
  pairs or dicts of tensors (``pixel_values``, ``input_ids``, ``attention_mask``, ``label``, ...),
  through a ``DataLoader`` with workers, ``pin_memory`` and :func:`collate`.
* :class:`UserLoaderBatches` -- a ``DataLoader`` the user built; batches are taken as they come.

Domain adaptation pairs every source batch with a target batch of the same size (as skada's
domain-balanced loader does); :class:`TargetDraw` draws the target positions from whole reshuffled
passes over the target set, back to back, so the smaller set cycles. Target examples carry the
label :data:`UNLABELLED` (``-1``, never a class) and the domain label 1; source examples domain 0.

Across processes (data-parallel training) every rank computes the same epoch order and takes its
share of each global batch (``positions[rank::world_size]``), so shuffling agrees across ranks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from transferkit.data.base import TensorDataset
from transferkit.errors import ConfigError, DataError

UNLABELLED = -1
"""The label of an unlabelled example (never a valid class)."""

_LABEL_KEYS = ("label", "labels", "y")
_INDEX_KEY = "index"

Inputs = torch.Tensor | dict[str, torch.Tensor]


@dataclass
class Examples:
    """One batch as the loop receives it.

    Attributes:
        x: Inputs ``(N, ...)``, or a dict of such tensors (text: ``input_ids``, ``attention_mask``).
        y: Labels ``(N,)`` int64; :data:`UNLABELLED` (-1) for unlabelled examples.
        index: Positions of the examples in their dataset ``(N,)`` int64 on the CPU (keys of
            per-example caches such as precomputed teacher outputs), or ``None`` when unknown.
        domain: Domain label of every example ``(N,)`` int64: 0 = source, 1 = target.
        target: The paired unlabelled target batch (domain adaptation), or ``None``.
        soft: Soft targets ``(N, num_classes)`` when augmentation mixed examples (mixup, cutmix).
        all_labelled: Known to hold no unlabelled example (saves a count per step).
        task: The task these examples belong to (multi-task training), or ``None``.
        tasks: A multi-task step's batch of every task (task name -> Examples); the container's own
            ``x`` and ``y`` are then the first task's inputs and every task's labels one after the other.
    """

    x: Inputs
    y: torch.Tensor
    index: torch.Tensor | None = None
    domain: torch.Tensor | None = None
    target: Examples | None = None
    soft: torch.Tensor | None = None
    all_labelled: bool = False
    task: str | None = None
    tasks: dict[str, Examples] | None = None

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device: torch.device, non_blocking: bool = False) -> Examples:
        """A copy with inputs and labels on ``device`` (``index`` stays on the CPU); ``self`` when
        they are there already."""
        if self.y.device == device and self.target is None and self.soft is None and self.tasks is None:
            return self
        if self.tasks is not None:
            return replace(self, x=move(self.x, device, non_blocking),
                           y=self.y.to(device, non_blocking=non_blocking),
                           tasks={t: e.to(device, non_blocking) for t, e in self.tasks.items()})
        return replace(
            self,
            x=move(self.x, device, non_blocking),
            y=self.y.to(device, non_blocking=non_blocking),
            domain=None if self.domain is None else self.domain.to(device, non_blocking=non_blocking),
            target=None if self.target is None else self.target.to(device, non_blocking),
            soft=None if self.soft is None else self.soft.to(device, non_blocking=non_blocking),
        )

    def pin_memory(self) -> Examples:
        """Called by a ``DataLoader`` with ``pin_memory=True``: page-locked copies for fast copies to CUDA."""
        return replace(self, x=_pin(self.x), y=self.y.pin_memory(),
                       target=None if self.target is None else self.target.pin_memory())


def _pin(x: Inputs) -> Inputs:
    return {k: v.pin_memory() for k, v in x.items()} if isinstance(x, dict) else x.pin_memory()


def move(x: Inputs, device: torch.device, non_blocking: bool = False) -> Inputs:
    """``x`` (a tensor or a dict of tensors) on ``device``."""
    if isinstance(x, dict):
        return {k: v.to(device, non_blocking=non_blocking) for k, v in x.items()}
    return x.to(device, non_blocking=non_blocking)


def first_rows(x: Inputs, n: int) -> Inputs:
    """The first ``n`` examples of a tensor or dict of tensors."""
    if isinstance(x, dict):
        return {k: v[:n] for k, v in x.items()}
    return x[:n]


def concat(a: Inputs, b: Inputs) -> Inputs:
    """Two batches of inputs, one after the other (same keys for dicts); token ids of different
    lengths (texts of two domains) are right-padded with -1 to the longer."""
    if isinstance(a, dict):
        return {k: torch.cat([a[k], b[k]]) for k in a}
    if a.ndim == b.ndim == 2 and not a.is_floating_point() and a.shape[1] != b.shape[1]:
        width = max(a.shape[1], b.shape[1])
        a, b = (torch.nn.functional.pad(t, (0, width - t.shape[1]), value=-1) for t in (a, b))
    return torch.cat([a, b])


def split_item(item: Any) -> tuple[Inputs, Any]:
    """``(inputs, label)`` of one dataset item or one collated batch.

    Items are ``(x, y)`` pairs, dicts (the label under ``label``/``labels``/``y``; the other keys
    are the inputs, a single key unwrapped to its tensor) or bare inputs (label ``None``).
    """
    if isinstance(item, Mapping):
        d = dict(item)
        label = None
        for key in _LABEL_KEYS:
            if key in d:
                label = d.pop(key)
                break
        d.pop(_INDEX_KEY, None)
        if not d:
            raise DataError("a dataset item holds only a label and no inputs; add e.g. 'pixel_values'")
        return (next(iter(d.values())) if len(d) == 1 else d), label
    if isinstance(item, (tuple, list)):
        if len(item) == 2:
            return item[0], item[1]
        if len(item) == 1:
            return item[0], None
        raise DataError(
            f"a dataset item is a sequence of {len(item)} values; return (inputs, label) or a dict "
            "such as {'pixel_values': ..., 'label': ...}"
        )
    return item, None


def _labels(label: Any, n: int) -> torch.Tensor:
    if label is None:
        return torch.full((n,), UNLABELLED, dtype=torch.long)
    y = torch.as_tensor(label)
    if y.is_floating_point():
        raise DataError(f"labels must be integer class indices, got {y.dtype}; convert with .long()")
    return y.long().reshape(-1)


def collate(items: Sequence[tuple[int, Any]]) -> Examples:
    """``DataLoader`` collate function over ``(position, item)`` pairs: stacks the inputs (tensors
    or dicts of tensors) and labels into :class:`Examples` (missing labels become -1)."""
    from torch.utils.data import default_collate

    positions = torch.as_tensor([p for p, _ in items], dtype=torch.long)
    x, label = split_item(default_collate([item for _, item in items]))
    return Examples(x, _labels(label, len(positions)), positions)


def as_examples(batch: Any) -> Examples:
    """A batch from a user's ``DataLoader`` (``(x, y)``, a dict, or :class:`Examples`) as Examples."""
    if isinstance(batch, Examples):
        return batch
    index = batch.get(_INDEX_KEY) if isinstance(batch, Mapping) else None
    x, label = split_item(batch)
    n = len(next(iter(x.values()))) if isinstance(x, dict) else len(x)
    return Examples(x, _labels(label, n), None if index is None else torch.as_tensor(index).long())


class _Positioned(Dataset):
    """``dataset[i]`` as ``(i, item)`` so batches know their examples' positions."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[int, Any]:
        return i, self.dataset[i]


# ----------------------------------------------------------------------------- epoch order
def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of the shuffling generator of 0-based ``epoch`` (same batches on resume)."""
    return (int(seed) * 1_000_003 + int(epoch)) % (2**63)


def batch_slices(n: int, batch_size: int) -> list[slice]:
    """Batch boundaries over ``n`` examples; a last batch of one joins the previous batch
    (a single example breaks BatchNorm in train mode)."""
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    ends = starts[1:] + [n]
    return [slice(s, e) for s, e in zip(starts, ends, strict=True)]


class EpochOrder:
    """The batches of every epoch as positions: a seeded permutation cut into global batches,
    each rank keeping ``positions[rank::world_size]``; with ``target_size`` every batch is paired
    with target positions (:class:`TargetDraw`).

    Args:
        n: Examples in the (source) training set.
        batch_size: Examples per global batch (all ranks together).
        seed: The run's seed; epoch ``e`` shuffles with :func:`epoch_seed` ``(seed, e)``.
        shuffle: ``False`` keeps the dataset order (evaluation).
        target_size: Size of the paired target set, or ``None``.
        rank, world_size: This process's share of every batch.
        target_ratio: Target examples paired with every source example.
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, shuffle: bool = True,
                 target_size: int | None = None, rank: int = 0, world_size: int = 1,
                 target_ratio: int = 1) -> None:
        self.n, self.batch_size, self.seed, self.shuffle = n, batch_size, seed, shuffle
        self.target_size, self.rank, self.world_size = target_size, rank, world_size
        self.target_ratio = int(target_ratio)
        self.slices = batch_slices(n, batch_size) if n else []
        if world_size > 1 and any(s.stop - s.start < world_size for s in self.slices):
            raise ConfigError(
                f"a batch of the training set ({n} examples, batch_size={batch_size}) is smaller than "
                f"the {world_size} processes; raise batch_size or use fewer processes"
            )

    def __len__(self) -> int:
        return len(self.slices)

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """``(positions, target_positions)`` of every batch of 0-based ``epoch`` for this rank."""
        if self.shuffle:
            gen = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
            order = torch.randperm(self.n, generator=gen)
        else:
            order = torch.arange(self.n)
        draw = TargetDraw(self.target_size, self.seed, epoch) if self.target_size else None
        for sl in self.slices:
            idx = order[sl]
            idx_t = draw.take(len(idx) * self.target_ratio) if draw is not None else None
            if self.world_size > 1:
                idx = idx[self.rank :: self.world_size]
                idx_t = None if idx_t is None else idx_t[self.rank :: self.world_size]
            yield idx, idx_t


class TargetDraw:
    """Target positions for one epoch: whole reshuffled passes over the target set back to back
    (so the smaller set cycles), seeded by the epoch so a resumed run repeats them."""

    def __init__(self, size: int, seed: int, epoch: int) -> None:
        self.size = size
        self.gen = torch.Generator().manual_seed(epoch_seed(seed, epoch) ^ 0x7A5C3)
        self.pending = torch.empty(0, dtype=torch.long)

    def take(self, m: int) -> torch.Tensor:
        while len(self.pending) < m:
            self.pending = torch.cat([self.pending, torch.randperm(self.size, generator=self.gen)])
        out, self.pending = self.pending[:m], self.pending[m:]
        return out


def _domain(n: int, value: int) -> torch.Tensor:
    return torch.full((n,), value, dtype=torch.long)


def _pair(src: Examples, tgt_x: Inputs, idx_t: torch.Tensor) -> Examples:
    """``src`` with its target batch attached (labels -1, domain 1) and its own domain 0."""
    n_t = len(idx_t)
    target = Examples(tgt_x, _labels(None, n_t), idx_t, _domain(n_t, 1))
    return replace(src, domain=_domain(len(src), 0), target=target)


# ----------------------------------------------------------------------------- batch sources
class TensorBatches:
    """The in-memory fast path: batches are tensor indexings of a :class:`TensorDataset`.

    Args:
        data: The training set.
        order: The epoch order (:class:`EpochOrder`).
        target: The unlabelled target set paired with every batch, or ``None``.
    """

    def __init__(self, data: TensorDataset, order: EpochOrder, target: Dataset | None = None) -> None:
        self.data, self.order, self.target = data, order, target
        self.inputs = True  # False when the step reads cached features: x is then left empty

    def __len__(self) -> int:
        return len(self.order)

    def epoch(self, epoch: int) -> Iterator[Examples]:
        x, y = self.data.x, self.data.y
        labelled = bool(len(y) == 0 or int(y.min()) >= 0)
        for idx, idx_t in self.order.batches(epoch):
            ex = Examples(x[idx] if self.inputs else x[:0], y[idx], idx, all_labelled=labelled)
            if idx_t is None:
                yield ex
            else:  # with cached features the target's inputs are not read either
                yield _pair(ex, gather(self.target, idx_t) if self.inputs else x[:0], idx_t)


class _OrderSampler(Sampler):
    """A ``DataLoader`` batch sampler replaying one epoch of an :class:`EpochOrder`."""

    def __init__(self, order: EpochOrder, target: bool) -> None:
        self.order, self.target, self.epoch = order, target, 0

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[list[int]]:
        for idx, idx_t in self.order.batches(self.epoch):
            yield (idx_t if self.target else idx).tolist()


class LoaderBatches:
    """Batches of any map-style dataset through ``torch.utils.data.DataLoader``.

    Items are decoded in ``num_workers`` worker processes (workers persist across epochs) and
    collated by :func:`collate`; with ``pin_memory`` batches arrive page-locked for non-blocking
    copies to the GPU. The target set (domain adaptation) gets a loader of its own replaying the
    same :class:`EpochOrder`.
    """

    def __init__(self, data: Dataset, order: EpochOrder, target: Dataset | None = None,
                 num_workers: int = 0, pin_memory: bool = False) -> None:
        self.order = order
        self.samplers = [_OrderSampler(order, target=False)]
        self.loaders = [self._loader(data, self.samplers[0], num_workers, pin_memory)]
        if target is not None:
            self.samplers.append(_OrderSampler(order, target=True))
            self.loaders.append(self._loader(target, self.samplers[1], num_workers, pin_memory))

    @staticmethod
    def _loader(data: Dataset, sampler: Sampler, workers: int, pin: bool) -> DataLoader:
        return DataLoader(_Positioned(data), batch_sampler=sampler, num_workers=workers, collate_fn=collate,
                          pin_memory=pin, persistent_workers=workers > 0)

    def __len__(self) -> int:
        return len(self.order)

    def epoch(self, epoch: int) -> Iterator[Examples]:
        for s in self.samplers:
            s.epoch = epoch
        if len(self.loaders) == 1:
            yield from self.loaders[0]
            return
        for src, tgt in zip(*self.loaders, strict=True):
            yield _pair(src, tgt.x, tgt.index)


class UserLoaderBatches:
    """A ``DataLoader`` the user built, taken as it is (its sampler's ``set_epoch`` is called);
    a target set is paired by :class:`TargetDraw` positions."""

    def __init__(self, loader: DataLoader, seed: int = 0, target: Dataset | None = None) -> None:
        self.loader, self.seed, self.target = loader, seed, target

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, epoch: int) -> Iterator[Examples]:
        for holder in (self.loader.sampler, getattr(self.loader, "batch_sampler", None)):
            if hasattr(holder, "set_epoch"):
                holder.set_epoch(epoch)
        draw = TargetDraw(len(self.target), self.seed, epoch) if self.target is not None else None
        for batch in self.loader:
            ex = as_examples(batch)
            if draw is not None:
                idx_t = draw.take(len(ex))
                ex = _pair(ex, gather(self.target, idx_t), idx_t)
            yield ex


def take(data: Dataset, positions: torch.Tensor) -> Examples:
    """The examples of ``data`` at ``positions`` as one batch (tensor indexing for a TensorDataset)."""
    positions = torch.as_tensor(positions, dtype=torch.long)
    if isinstance(data, TensorDataset):
        return Examples(data.x[positions], data.y[positions], positions)
    return collate([(int(p), data[int(p)]) for p in positions])


class TaskBatches:
    """Batches of a :class:`~transferkit.data.tasks.TaskSet` (multi-task training), seeded per epoch.

    With ``sampling="all"`` every step holds a batch of every task (``Examples.tasks``); an epoch is
    one pass over the largest task, each smaller task's examples reshuffled whenever they run out.
    Otherwise every step is a batch of one task (``Examples.task``) drawn with the set's
    probabilities; an epoch has as many steps as one pass over every task's examples takes.
    """

    def __init__(self, tasks: Any, batch_size: int, seed: int = 0) -> None:
        self.tasks, self.batch_size, self.seed = tasks, int(batch_size), int(seed)
        self.names = list(tasks)
        for name in self.names:
            if not isinstance(tasks[name], TensorDataset):
                raise ConfigError(f"multi-task training reads in-memory TensorDatasets; task {name!r} is a "
                                  f"{type(tasks[name]).__name__}")
        sizes = [len(tasks[t]) for t in self.names]
        per_step = max(sizes) if tasks.sampling == "all" else sum(sizes)
        self.steps = max(1, -(-per_step // self.batch_size))

    def __len__(self) -> int:
        return self.steps

    def _take(self, task: str, draw: TargetDraw) -> Examples:
        data = self.tasks[task]
        idx = draw.take(min(self.batch_size, len(data)))
        return Examples(data.x[idx], data.y[idx], idx, all_labelled=True, task=task)

    def epoch(self, epoch: int) -> Iterator[Examples]:
        draws = {t: TargetDraw(len(self.tasks[t]), self.seed + 7919 * i, epoch)
                 for i, t in enumerate(self.names)}
        if self.tasks.sampling == "all":
            for _ in range(self.steps):
                parts = {t: self._take(t, draws[t]) for t in self.names}
                first = parts[self.names[0]]
                yield Examples(first.x, torch.cat([p.y for p in parts.values()]), None, all_labelled=True,
                               tasks=parts)
            return
        gen = torch.Generator().manual_seed(epoch_seed(self.seed, epoch) ^ 0x5A17)
        probs = torch.tensor([self.tasks.probabilities[t] for t in self.names], dtype=torch.float64)
        for pick in torch.multinomial(probs, self.steps, replacement=True, generator=gen).tolist():
            yield self._take(self.names[pick], draws[self.names[pick]])


Batches = TensorBatches | LoaderBatches | UserLoaderBatches | TaskBatches


def make_batches(train: Dataset | DataLoader, target: Dataset | None, config: Any, rank: int = 0,
                 world_size: int = 1, cuda: bool = False) -> Batches:
    """The batch source of a fit: the in-memory fast path for a TensorDataset (and an in-memory
    target), a DataLoader with ``config.num_workers`` workers for any other dataset, a user's own
    DataLoader as it is. ``target`` is paired with every batch (``None``: no pairing)."""
    if isinstance(train, DataLoader):
        return UserLoaderBatches(train, config.seed, target)
    from transferkit.data.tasks import TaskSet

    if isinstance(train, TaskSet):
        if target is not None:
            raise ConfigError("multi-task training does not pair batches with unlabelled target data")
        if world_size > 1:
            raise ConfigError("multi-task training runs in one process; launch it without torchrun")
        return TaskBatches(train, config.batch_size, config.seed)
    order = EpochOrder(num_examples(train), config.batch_size, config.seed,
                       target_size=None if target is None else num_examples(target),
                       rank=rank, world_size=world_size, target_ratio=config.unlabeled_ratio)
    if isinstance(train, TensorDataset) and (target is None or isinstance(target, TensorDataset)):
        return TensorBatches(train, order, target)
    return LoaderBatches(train, order, target, config.num_workers, config.pin_memory and cuda)


def augmenter(specs: Sequence[Any], num_classes: int | None,
              device: torch.device) -> Callable[[Examples], Examples] | None:
    """Train-time augmentation by name (:mod:`transferkit.data.augment`) as a function of a batch
    on ``device``: images augmented, soft targets set by mixup / cutmix; ``None`` without specs."""
    if not specs:
        return None
    from transferkit.data.augment import build_augmentation  # imports kornia: only when used

    aug = build_augmentation(specs, num_classes=num_classes).to(device)

    def apply(ex: Examples) -> Examples:
        if isinstance(ex.x, dict):
            raise ConfigError("augment works on image batches (N, C, H, W); these inputs are a "
                              f"dict ({', '.join(ex.x)}): drop train.augment for them")
        x, soft = aug(ex.x, ex.y)
        return replace(ex, x=x, soft=soft)

    return apply


def view_maker(config: Any, objectives: Sequence[Any],
               device: torch.device) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None:
    """The weak / strong views (``config.weak_augment`` / ``strong_augment``, else the library's
    defaults) for objectives that ask for them (``needs_views``); ``None`` when none does."""
    if not any(getattr(o, "needs_views", False) for o in objectives):
        return None
    from transferkit.data.augment import STRONG, WEAK, build_views

    weak = WEAK if config.weak_augment is None else config.weak_augment
    strong = STRONG if config.strong_augment is None else config.strong_augment
    return build_views(weak, strong).to(device)


def gather(data: Dataset, positions: torch.Tensor) -> Inputs:
    """The inputs of ``data`` at ``positions`` as one batch."""
    return take(data, positions).x


def input_batches(data: Dataset, batch_size: int, num_workers: int = 0) -> Iterator[Inputs]:
    """The inputs of ``data`` in dataset order, ``batch_size`` at a time (precomputing teacher
    outputs, features, Fisher information...)."""
    if isinstance(data, TensorDataset):
        for start in range(0, len(data), batch_size):
            yield data.x[start : start + batch_size]
        return
    yield from (ex.x for ex in labelled_batches(data, batch_size, num_workers))


def labelled_batches(data: Dataset, batch_size: int, num_workers: int = 0) -> Iterator[Examples]:
    """:class:`Examples` of ``data`` in dataset order (evaluation); token ids (text) shortest text
    first, so every batch is as short as its longest text allows (``index`` gives the positions)."""
    lengths = getattr(data, "lengths", None)
    if isinstance(data, TensorDataset) and callable(lengths):
        order = torch.argsort(lengths(), stable=True)
        for start in range(0, len(data), batch_size):
            pos = order[start : start + batch_size]
            yield Examples(data.x[pos], data.y[pos], pos)
        return
    if isinstance(data, TensorDataset):
        for start in range(0, len(data), batch_size):
            sl = slice(start, start + batch_size)
            yield Examples(data.x[sl], data.y[sl], torch.arange(start, min(start + batch_size, len(data))))
        return
    if isinstance(data, DataLoader):
        yield from (as_examples(b) for b in data)
        return
    loader = DataLoader(_Positioned(data), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=collate)
    yield from loader


def first_input(data: Dataset | DataLoader) -> Inputs:
    """The first example's inputs as a batch of one ``(1, ...)`` (shape probes)."""
    if isinstance(data, TensorDataset):
        return data.x[:1]
    if isinstance(data, DataLoader):
        return first_rows(as_examples(next(iter(data))).x, 1)
    return collate([(0, data[0])]).x


def labels_of(data: Dataset | DataLoader) -> torch.Tensor | None:
    """All labels of ``data`` when known without reading the examples (``y`` of a TensorDataset,
    ``targets`` or ``labels`` of other datasets), else ``None``."""
    if isinstance(data, TensorDataset):
        return data.y
    for attr in ("targets", "labels"):
        value = getattr(data, attr, None)
        if value is not None and not callable(value):
            return torch.as_tensor(value).long().reshape(-1)
    return None


def num_examples(data: Dataset | DataLoader) -> int:
    """Examples in ``data`` (a dataset's length, or a DataLoader's dataset's)."""
    if isinstance(data, DataLoader):
        return len(data.dataset)
    return len(data)


def data_name(data: Dataset | DataLoader) -> str:
    """A dataset's ``name`` for messages, else its class name."""
    inner = data.dataset if isinstance(data, DataLoader) else data
    return str(getattr(inner, "name", "") or type(inner).__name__)


def input_shape(data: Dataset | DataLoader) -> tuple[int, ...] | None:
    """Shape of one input (``input_shape`` attribute, or the first example's), ``None`` for dict inputs."""
    shape = getattr(data, "input_shape", None)
    if shape is not None:
        return tuple(shape)
    x = first_input(data)
    return None if isinstance(x, dict) else tuple(x.shape[1:])


__all__ = [
    "UNLABELLED",
    "EpochOrder",
    "Examples",
    "LoaderBatches",
    "TargetDraw",
    "TensorBatches",
    "UserLoaderBatches",
    "as_examples",
    "batch_slices",
    "collate",
    "epoch_seed",
    "first_input",
    "input_batches",
    "labelled_batches",
    "labels_of",
    "num_examples",
    "take",
]
