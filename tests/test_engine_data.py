"""The engine's data seam: any map-style Dataset (tuples or dicts), a user's DataLoader, workers,
source/target pairing, unlabelled examples -- each checked against the in-memory fast path."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from transferkit.engine import UNLABELLED, CrossEntropy, TrainConfig, Trainer
from transferkit.engine.batches import EpochOrder, Examples, collate, split_item
from transferkit.engine.objectives import build_objectives
from transferkit.errors import DataError, LabelError
from transferkit.models import create_model


class Plain(Dataset):
    """A map-style dataset over a TensorDataset's tensors, items as tuples or dicts."""

    def __init__(self, data, as_dict: bool = False, with_targets: bool = True) -> None:
        self.x, self.y, self.as_dict = data.x, data.y, as_dict
        if with_targets:
            self.targets = data.y.tolist()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        if self.as_dict:
            return {"pixel_values": self.x[i], "label": int(self.y[i])}
        return self.x[i], self.y[i]


def _mlp(seed: int = 0):
    torch.manual_seed(seed)
    return create_model("mlp", num_classes=10, in_features=64, hidden=(16,))


def _cfg(**kw):
    return TrainConfig(**{"epochs": 2, "batch_size": 32, "device": "cpu", "amp": False, "seed": 4,
                          "scheduler": "none", **kw})


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _fit(data, val=None, target=None, objectives=None, **cfg):
    model = _mlp()
    history = Trainer(model, _cfg(**cfg), objectives).fit(data, val, target=target)
    return _weights(model), history


def _same(a, b):
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


@pytest.mark.parametrize("as_dict", [False, True])
def test_any_dataset_trains_exactly_like_the_in_memory_path(digits, as_dict):
    train, val = digits.train.subset(range(200)), digits.val.subset(range(60))
    fast, h_fast = _fit(train, val)
    slow, h_slow = _fit(Plain(train, as_dict), Plain(val, as_dict))
    _same(fast, slow)
    assert h_fast.epochs[-1]["val_accuracy"] == h_slow.epochs[-1]["val_accuracy"]
    assert h_fast.epochs[-1]["train_loss"] == pytest.approx(h_slow.epochs[-1]["train_loss"], abs=1e-6)


def test_workers_give_the_same_batches_as_the_main_process(digits):
    train = digits.train.subset(range(160))
    one, _ = _fit(Plain(train), num_workers=0)
    two, _ = _fit(Plain(train), num_workers=2)
    _same(one, two)


def test_cached_linear_probe_on_a_dataset_equals_the_in_memory_one(digits):
    train, val = digits.train.subset(range(200)), digits.val.subset(range(60))
    fast, _ = _fit(train, val, strategy="linear_probe")
    slow, _ = _fit(Plain(train), Plain(val), strategy="linear_probe")
    _same(fast, slow)


def test_domain_pairs_from_datasets_equal_the_in_memory_pairs(digits):
    train, target = digits.train.subset(range(120)), digits.val.subset(range(50))
    objs = lambda: [CrossEntropy()] + build_objectives([{"name": "dann"}])  # noqa: E731
    fast, _ = _fit(train, target=target, objectives=objs())
    slow, _ = _fit(Plain(train, as_dict=True), target=Plain(target, as_dict=True), objectives=objs())
    _same(fast, slow)


def test_a_users_dataloader_is_taken_as_it_comes(digits):
    train = digits.train.subset(range(96))
    seen = []

    class Sampler(torch.utils.data.Sampler):
        def __init__(self):
            self.epochs = []

        def set_epoch(self, e):
            self.epochs.append(e)

        def __iter__(self):
            return iter(range(96))

        def __len__(self):
            return 96

    sampler = Sampler()
    def counting(items):
        seen.append(len(items))
        return torch.utils.data.default_collate(items)

    loader = DataLoader(Plain(train, as_dict=True), batch_size=48, sampler=sampler, collate_fn=counting)
    model = _mlp()
    history = Trainer(model, _cfg(epochs=3)).fit(loader, loader)
    assert sampler.epochs == [0, 1, 2] and seen.count(48) >= 6
    assert history.epochs[-1]["val_accuracy"] > 0.1


def test_labels_out_of_the_head_are_refused_in_the_batch_when_not_known_up_front(digits):
    train = digits.train.subset(range(64))
    bad = Plain(train, with_targets=False)
    bad.y = bad.y.clone()
    bad.y[40] = 12
    with pytest.raises(LabelError, match="holds label 12 but the model's head predicts 10 classes"):
        Trainer(_mlp(), _cfg(epochs=1)).fit(bad)
    with_targets = Plain(train)
    with_targets.targets[3] = 11
    with pytest.raises(LabelError, match="train labels go up to 11"):
        Trainer(_mlp(), _cfg(epochs=1)).fit(with_targets)


def test_items_and_collation():
    x = torch.ones(3)
    assert split_item((x, 2))[1] == 2
    inputs, label = split_item({"input_ids": x, "attention_mask": x, "labels": 1})
    assert set(inputs) == {"input_ids", "attention_mask"} and label == 1
    assert split_item({"pixel_values": x, "label": 0})[0] is x
    ex = collate([(5, {"pixel_values": x}), (7, {"pixel_values": x})])
    assert ex.index.tolist() == [5, 7] and ex.y.tolist() == [UNLABELLED, UNLABELLED]
    with pytest.raises(DataError, match="only a label"):
        split_item({"label": 1})
    with pytest.raises(DataError, match="sequence of 3 values"):
        split_item((x, 1, 2))
    with pytest.raises(DataError, match="integer class indices"):
        collate([(0, (x, 0.5))])


def test_epoch_order_shards_every_global_batch_across_ranks():
    whole = EpochOrder(9, 4, seed=1, target_size=3)
    parts = [EpochOrder(9, 4, seed=1, target_size=3, rank=r, world_size=2) for r in range(2)]
    for (idx, tgt), (a, ta), (b, tb) in zip(whole.batches(0), parts[0].batches(0), parts[1].batches(0),
                                             strict=True):
        assert sorted(idx.tolist()) == sorted(a.tolist() + b.tolist())
        assert sorted(tgt.tolist()) == sorted(ta.tolist() + tb.tolist())
    assert [len(i) for i, _ in whole.batches(0)] == [4, 5]  # a last batch of one joins the previous
    assert not torch.equal(next(whole.batches(0))[0], next(whole.batches(1))[0])


def test_examples_move_with_their_target(digits):
    ex = Examples(torch.zeros(2, 3), torch.tensor([1, 2]), torch.tensor([0, 1]),
                  target=Examples({"a": torch.zeros(2)}, torch.full((2,), -1)))
    moved = ex.to(torch.device("cpu"))
    assert moved.target.x["a"].shape == (2,) and moved.index.tolist() == [0, 1]


def test_a_dataset_without_labels_is_refused_when_cross_entropy_needs_them(digits):
    class Bare(Dataset):
        def __len__(self):
            return 40

        def __getitem__(self, i):
            return {"pixel_values": digits.train.x[i]}

    with pytest.raises(DataError, match="holds no labelled example .* cross_entropy learns from labels"):
        Trainer(_mlp(), _cfg(epochs=1)).fit(Bare())
