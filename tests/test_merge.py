"""Merging models: each method's arithmetic by hand, heads, checks, Git Re-Basin alignment."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from transferkit.data import TensorDataset
from transferkit.engine import TrainConfig, Trainer
from transferkit.errors import ConfigError, ShapeError, UnknownNameError
from transferkit.models import create_model, load_model, save_model, select_task, task_model
from transferkit.transfer.merge import MERGE_METHODS, consensus_mask, merge, sparsify, task_vector_merge
from transferkit.transfer.merge.rebasin import (
    activation_matching,
    apply_permutation,
    loss_barrier,
    permutation_spec,
    weight_matching,
)
from transferkit.transfer.merge.soup import greedy_soup


def _mlp(value: float | None = None, classes: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = create_model("mlp", num_classes=classes, in_features=4, hidden=(5,))
    if value is not None:
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(value)
    return model


def _w(model: nn.Module) -> torch.Tensor:
    return model.state_dict()["backbone.fc1.0.weight"]


# ------------------------------------------------------------------------------ the arithmetic
def test_weighted_average_by_hand():
    a, b = _mlp(1.0), _mlp(4.0)
    assert torch.allclose(_w(merge([a, b]).model), torch.full((5, 4), 2.5))
    result = merge([a, b], weights=[3, 1])
    assert torch.allclose(_w(result.model), torch.full((5, 4), (3 * 1 + 4) / 4))
    assert result.heads == "merged" and torch.allclose(result.model.head.weight, torch.full((3, 5), 1.75))
    assert torch.equal(_w(a), torch.ones(5, 4))  # inputs unchanged
    # a merged head keeps the class names its inputs share, and has none when they differ
    a.info.class_names, b.info.class_names = ["x", "y", "z"], ["x", "y", "z"]
    assert merge([a, b]).model.info.class_names == ["x", "y", "z"]
    b.info.class_names = ["z", "y", "x"]
    assert merge([a, b]).model.info.class_names is None


def test_task_arithmetic_by_hand_keeps_each_head():
    base, a, b = _mlp(1.0), _mlp(2.0), _mlp(4.0)
    result = merge({"a": a, "b": b}, "task_arithmetic", base=base, scale=0.5, weights=[1, 2])
    # 1 + 0.5 * (1 * (2 - 1) + 2 * (4 - 1)) = 4.5
    assert torch.allclose(_w(result.model), torch.full((5, 4), 4.5))
    assert result.heads == "kept" and result.model.info.tasks == {"a": 3, "b": 3}
    assert result.model.info.class_names is None  # kept heads: one per task, no single list of names
    assert torch.equal(task_model(result.model, "b").head.weight, b.head.weight)
    one = merge([a], "task_arithmetic", base=base, scale=1.0).model  # one task vector at scale 1: the model
    assert torch.equal(_w(one), _w(a))


def test_ties_by_hand():
    base = torch.zeros(5)
    stack = torch.tensor([[3.0, -1.0, 0.5, 2.0, -4.0],
                          [-2.0, 2.0, 1.0, 0.1, -1.0],
                          [1.0, -3.0, -0.2, -5.0, 0.3]])
    # trim to 40 % (2 of 5 entries by magnitude): [3,0,0,0,-4], [-2,2,0,0,0], [0,-3,0,-5,0]
    # elected signs (sum): [+1, -1, +1(0), -1, -1]; disjoint mean over agreeing entries
    expected = torch.tensor([3.0, -3.0, 0.0, -5.0, -4.0])
    merged = task_vector_merge(stack, base, torch.ones(3), density=0.4, sparsify_by="magnitude",
                               consensus="sum", normalize=True)
    assert torch.allclose(merged, expected)
    spec = MERGE_METHODS.get("ties")
    options = {**spec.options, "density": 0.4}
    assert torch.allclose(spec.combine(stack, base, torch.ones(3), **options), expected)
    # "count" consensus: signs [+1 (2 of 3), -1, +, -, -]
    assert torch.equal(consensus_mask(torch.tensor([[1.0, -1.0], [-5.0, -1.0], [1.0, 2.0]]), "count"),
                       torch.tensor([[1.0, 1.0], [0.0, 1.0], [1.0, 0.0]]))


def test_dare_drops_and_rescales():
    delta = torch.randn(2000, generator=torch.Generator().manual_seed(0))
    kept = sparsify(delta, 0.3, "random", rescale="l1", generator=torch.Generator().manual_seed(1))
    assert 0.25 < float((kept != 0).float().mean()) < 0.35
    assert torch.allclose(kept.abs().sum(), delta.abs().sum())
    by_density = sparsify(delta, 0.3, "random", rescale="density", generator=torch.Generator().manual_seed(1))
    nz = by_density != 0
    assert torch.allclose(by_density[nz], delta[nz] / 0.3)
    # the paper's rescaling keeps the task vector in expectation
    draws = torch.stack([sparsify(delta, 0.5, "random", rescale="density",
                                  generator=torch.Generator().manual_seed(s)) for s in range(400)])
    assert float((draws.mean(0) - delta).abs().mean()) < 0.06
    base, a = _mlp(0.0), _mlp(1.0)
    one = merge([a], "dare", base=base, density=1.0).model  # nothing dropped: task arithmetic
    assert torch.equal(_w(one), _w(a))
    seeded = [_w(merge([a], "dare", base=base, density=0.5, seed=s).model) for s in (3, 3, 4)]
    assert torch.equal(seeded[0], seeded[1]) and not torch.equal(seeded[0], seeded[2])


def test_fisher_weighting_by_hand():
    spec = MERGE_METHODS.get("fisher")
    stack = torch.tensor([[1.0, 1.0, 1.0], [3.0, 3.0, 3.0]])
    fisher = torch.tensor([[1.0, 0.0, 3.0], [1.0, 2.0, 1.0]])
    merged = spec.combine(stack, None, torch.ones(2), fisher=fisher, floor=0.0)
    assert torch.allclose(merged, torch.tensor([2.0, 3.0, 1.5]))


def test_fisher_merge_of_two_fine_tunes(digits):
    """Two fine-tunes of one model on digits (different seeds), merged with their Fisher weights."""
    base = _train(create_model("mlp", num_classes=10, in_features=64, hidden=(32,)), digits.train, 0, 0)
    models = []
    for seed in (1, 2):
        m = _copy_of(base)
        _train(m, digits.train, seed, epochs=3, reinit=False)
        models.append(m)
    result = merge(models, "fisher", data=[digits.train, digits.train], examples=64)
    assert result.details["fisher_examples"] == [64, 64]
    plain = merge(models, "average").model
    # both average two models of one task: the Fisher-weighted one is at least as good on validation
    from transferkit.evaluation import evaluate

    assert evaluate(result.model, digits.val).accuracy >= evaluate(plain, digits.val).accuracy - 0.02
    with pytest.raises(ConfigError, match="one dataset per model"):
        merge(models, "fisher", data=[digits.train])
    with pytest.raises(ConfigError, match="needs one dataset per model .its own task"):
        merge(models, "fisher")


def test_fisher_merge_keeps_heads_of_other_tasks(digits):
    """Two tasks (digits, parity) of one base: each model's Fisher on its own task; heads kept."""
    base = _train(create_model("mlp", num_classes=10, in_features=64, hidden=(32,)), digits.train, 0, 0)
    parity = TensorDataset(digits.train.x, digits.train.y % 2, classes=["even", "odd"], name="parity")
    digit_model = _train(_copy_of(base), digits.train, 1, epochs=2, reinit=False)
    parity_model = _copy_of(base)
    from transferkit.models import replace_head

    _train(replace_head(parity_model, 2), parity, 2, epochs=2, reinit=False)
    result = merge({"digit": digit_model, "parity": parity_model}, "fisher", data=[digits.train, parity],
                   examples=32)
    assert result.heads == "kept" and result.model.info.tasks == {"digit": 10, "parity": 2}
    assert torch.equal(task_model(result.model, "parity").head.weight, parity_model.head.weight)


def test_greedy_soup_choice_by_hand():
    acc = {(0,): 0.8, (1,): 0.9, (2,): 0.7, (1, 0): 0.91, (1, 0, 2): 0.85}

    chosen, record = greedy_soup(3, lambda idx: acc[tuple(idx)])
    assert chosen == [1, 0] and record["accuracy"] == 0.91
    assert [s["kept"] for s in record["tried"]] == [True, False]


def test_greedy_soup_on_digits(digits):
    base = create_model("mlp", num_classes=10, in_features=64, hidden=(32,))
    models = {}
    for i, lr in enumerate((1e-2, 3e-3, 1e-4)):
        m = _copy_of(base)
        _train(m, digits.train, i, epochs=3, lr=lr, reinit=False)
        models[f"lr{lr}"] = m
    result = merge(models, "greedy_soup", data=digits.val)
    soup = result.details["soup"]
    assert soup["chosen"][0] == max(soup["single"], key=soup["single"].get)
    from transferkit.evaluation import evaluate

    assert evaluate(result.model, digits.val).accuracy == pytest.approx(soup["accuracy"])
    assert soup["accuracy"] >= max(soup["single"].values())


# ------------------------------------------------------------------------------ checks and heads
def test_refusals_name_the_problem():
    a, b = _mlp(1.0), _mlp(2.0)
    with pytest.raises(UnknownNameError, match="ties"):
        merge([a, b], "tie")
    with pytest.raises(ConfigError, match="has no option 'density'; its options: none"):
        merge([a, b], density=0.5)
    with pytest.raises(ConfigError, match="takes no base model"):
        merge([a, b], base=a)
    with pytest.raises(ConfigError, match="pass base="):
        merge([a, b], "ties")
    with pytest.raises(ConfigError, match="at least 2 models"):
        merge([a])
    with pytest.raises(ConfigError, match="2 finite numbers"):
        merge([a, b], weights=[1, float("nan")])
    wide = create_model("mlp", num_classes=3, in_features=4, hidden=(6,))
    with pytest.raises(ShapeError, match="tensor 'backbone.fc1.0.weight' is \\(5, 4\\) there"):
        merge([a, wide])
    with pytest.raises(ShapeError, match="cannot merge 'model2' with 'model1'"):
        merge([a, wide], align="weight")  # checked before any alignment
    with pytest.raises(ConfigError, match="averages its chosen models uniformly: drop weights="):
        merge([a, b], "greedy_soup", weights=[1, 2], data=object())
    with pytest.raises(ConfigError, match="heads='keep'"):
        merge([a, _mlp(1.0, classes=4)], heads="merge")
    with pytest.raises(ConfigError, match="reads no data"):
        merge([a, b], data=[1, 2])


def test_different_heads_are_kept_and_saved(tmp_path):
    a, b = _mlp(1.0, classes=3), _mlp(3.0, classes=5)
    result = merge({"digits": a, "fashion": b})
    assert result.heads == "kept" and result.model.info.tasks == {"digits": 3, "fashion": 5}
    x = torch.rand(6, 4)
    model = result.model.eval()
    assert model(x).shape == (6, 3)
    select_task(model, "fashion")
    assert model(x).shape == (6, 5)
    save_model(model, tmp_path / "merged")
    loaded = select_task(load_model(tmp_path / "merged"), "fashion").eval()
    assert torch.equal(loaded(x), model(x))
    with pytest.raises(ConfigError, match="two inputs have a task named 'digits'"):
        merge({"both": result.model, "digits": _mlp(2.0, classes=3)}, heads="keep")


# ------------------------------------------------------------------------------ Git Re-Basin
def _permuted_copy(model: nn.Module, seed: int) -> tuple[nn.Module, list[torch.Tensor]]:
    spec = permutation_spec(model)
    g = torch.Generator().manual_seed(seed)
    perms = [torch.randperm(grp.size, generator=g) for grp in spec.groups]
    other = _copy_of(model)
    other.load_state_dict(apply_permutation(model.state_dict(), spec, perms))
    return other, perms


@pytest.mark.parametrize("arch,kwargs,shape", [
    ("mlp", {"in_features": 64, "hidden": (16, 12)}, (64,)),
    ("small_cnn", {"widths": (4, 6), "feature_dim": 10, "image_size": 8}, (1, 8, 8)),
])
def test_alignment_recovers_a_permuted_copy(arch, kwargs, shape):
    torch.manual_seed(0)
    model = create_model(arch, num_classes=5, **kwargs).eval()
    other, _ = _permuted_copy(model, 1)
    x = torch.rand(300, *shape)
    assert torch.allclose(model(x), other.eval()(x), atol=1e-5)  # permuting units keeps the function
    assert not torch.equal(_w_first(model), _w_first(other))
    perms, record = weight_matching(model, other)
    assert record["similarity_after"] == pytest.approx(1.0) and record["similarity_before"] < 0.99
    spec = permutation_spec(model)
    back = apply_permutation(other.state_dict(), spec, perms)
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())
    perms, record = activation_matching(model, other, x)
    assert min(record["correlation_after"]) > 0.99
    merged = merge([model, other], align="weight").model  # aligned average of a model and its copy: itself
    assert all(torch.allclose(merged.state_dict()[k].float(), v.float(), atol=1e-6)
               for k, v in model.state_dict().items())


def _w_first(model: nn.Module) -> torch.Tensor:
    return next(v for k, v in model.state_dict().items() if k.endswith("weight"))


def test_alignment_refuses_residual_structure():
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            return x + self.fc(x)

    model = create_model("mlp", num_classes=3, in_features=8, hidden=(8,))
    model.backbone.add_module("res", Residual())
    with pytest.raises(ShapeError, match="cannot align hidden units through 'backbone.res' \\(Residual\\).*"
                                         "residual"):
        permutation_spec(model)
    with pytest.raises(ConfigError, match="align must be 'weight' or 'activation'"):
        merge([_mlp(1.0), _mlp(2.0)], align="weights")


def test_rebasin_lowers_the_barrier_between_independent_models(digits):
    """Two MLPs trained on digits from different initialisations: the straight line between them
    crosses a loss barrier; after weight matching it is lower (Ainsworth et al., 2023)."""
    a = _train(create_model("mlp", num_classes=10, in_features=64, hidden=(128,)), digits.train, 1, epochs=8)
    b = _train(create_model("mlp", num_classes=10, in_features=64, hidden=(128,)), digits.train, 2, epochs=8)
    before = loss_barrier(a, b, digits.val, steps=5)
    aligned = merge([a, b], align="weight", weights=[0, 1]).model  # b permuted to match a
    assert torch.allclose(aligned.eval()(digits.val.x), b.eval()(digits.val.x), atol=1e-4)
    after = loss_barrier(a, aligned, digits.val, steps=5)
    assert before["loss"][0] == pytest.approx(after["loss"][0])
    assert after["loss_barrier"] < 0.5 * before["loss_barrier"]
    assert before["loss_barrier"] > 0.1


# ------------------------------------------------------------------------------ helpers
def _copy_of(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


def _train(model: nn.Module, data: TensorDataset, seed: int, epochs: int, lr: float = 1e-2,
           reinit: bool = True) -> nn.Module:
    torch.manual_seed(seed)
    for p in model.parameters() if reinit else ():  # a fresh initialisation per seed
        if p.ndim > 1:
            nn.init.kaiming_uniform_(p, a=5 ** 0.5)
    if epochs:
        Trainer(model, TrainConfig(epochs=epochs, lr=lr, backbone_lr_scale=1.0, seed=seed)).fit(data)
    return model
