"""Train-time augmentation and two views through the engine, on real 8x8 digits."""

from __future__ import annotations

import pytest
import torch

from transferkit.engine import Batch, CrossEntropy, Objective, TrainConfig, Trainer
from transferkit.errors import ConfigError
from transferkit.models import create_model


def _cnn(seed: int = 0):
    torch.manual_seed(seed)
    return create_model("small_cnn", num_classes=10, in_channels=1, image_size=8, widths=(4, 8),
                        feature_dim=16)


def _cfg(**kw):
    return TrainConfig(**{"epochs": 2, "batch_size": 32, "device": "cpu", "amp": False, "seed": 2,
                          "scheduler": "none", **kw})


def _fit(data, run_dir=None, resume=False, objectives=None, target=None, **kw):
    model = _cnn()
    history = Trainer(model, _cfg(**kw), objectives, run_dir=run_dir).fit(data, target=target, resume=resume)
    return {k: v.clone() for k, v in model.state_dict().items()}, history


class SeesInputs(Objective):
    """A zero loss that records the inputs of each step."""

    def __init__(self) -> None:
        super().__init__(0.0)
        self.inputs: list[torch.Tensor] = []
        self.flags: list[bool] = []

    def forward(self, batch: Batch) -> torch.Tensor:
        self.inputs.append(batch.x.detach().clone())
        self.flags.append(batch.augmented)
        return batch.logits.sum() * 0.0


def test_augmentation_changes_the_inputs_and_is_seeded(digits):
    train = digits.train.subset(range(96))
    plain, seen_plain = SeesInputs(), SeesInputs()
    _fit(train, objectives=[CrossEntropy(), seen_plain], epochs=1)
    a, _ = _fit(train, objectives=[CrossEntropy(), plain], augment=["hflip:p=1"], epochs=1)
    # every input of the step is the stored example mirrored (p=1), and the batch says so
    for got, want in zip(plain.inputs, seen_plain.inputs, strict=True):
        torch.testing.assert_close(got, want.flip(-1))
    assert all(plain.flags) and not any(seen_plain.flags)
    b, _ = _fit(train, augment=["crop:scale=0.5", "noise:std=0.1"])
    c, _ = _fit(train, augment=["crop:scale=0.5", "noise:std=0.1"])
    d, _ = _fit(train)
    assert all(torch.equal(b[k], c[k]) for k in b)  # seeded: the same run twice
    assert any(not torch.equal(b[k], d[k]) for k in b if b[k].is_floating_point())


def test_an_augmented_run_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path, digits):
    train = digits.train.subset(range(96))
    spec = ["hflip", "crop:scale=0.6", "mixup:alpha=0.4"]
    whole, _ = _fit(train, augment=spec, epochs=2)
    _fit(train, run_dir=tmp_path, augment=spec, epochs=1)
    resumed, history = _fit(train, run_dir=tmp_path, resume=True, augment=spec, epochs=2)
    for k in whole:
        torch.testing.assert_close(resumed[k], whole[k], rtol=0, atol=1e-6)
    assert len(history.epochs) == 2


def test_mixup_trains_on_soft_targets(digits):
    train = digits.train.subset(range(128))

    class Soft(Objective):
        def __init__(self):
            super().__init__(0.0)
            self.rows = []

        def forward(self, batch):
            self.rows.append(batch.y_soft.sum(1))
            return batch.logits.sum() * 0.0

    soft = Soft()
    _, history = _fit(train, objectives=[CrossEntropy(), soft], augment=["mixup:alpha=0.4"], epochs=1)
    assert all(torch.allclose(r, torch.ones_like(r)) for r in soft.rows)
    assert history.epochs[0]["train_loss"] > 0


def test_a_linear_probe_with_augmentation_trains_without_a_feature_cache(digits):
    train = digits.train.subset(range(96))
    seen = SeesInputs()
    _fit(train, objectives=[CrossEntropy(), seen], augment=["hflip:p=1"], strategy="linear_probe",
         epochs=1)
    assert seen.inputs and seen.flags[0]


class Views(Objective):
    uses_target = True
    needs_views = True

    def __init__(self):
        super().__init__(0.0)
        self.shapes = []
        self.differ = []

    def forward(self, batch):
        weak, strong = batch.target_views
        self.shapes.append((weak.shape, strong.shape, batch.target_x.shape))
        self.differ.append(not torch.equal(weak, strong))
        return batch.logits.sum() * 0.0


def test_objectives_asking_for_views_get_a_weak_and_a_strong_view_of_each_unlabelled_example(digits):
    views = Views()
    _fit(digits.train.subset(range(64)), objectives=[CrossEntropy(), views],
         target=digits.val.subset(range(64)), epochs=1, strong_augment=["hflip:p=1", "noise:std=0.2"])
    assert all(w == s == t for w, s, t in views.shapes) and all(views.differ)


@pytest.mark.parametrize(("spec", "pattern"), [
    (["flp"], r"augment.*unknown augmentation 'flp'; did you mean 'hflip'"),
    (["crop:scael=0.5"], r"augment.*scael"),
    ([{"name": "noise", "std": -1}], r"augment.*std"),
])
def test_bad_augmentation_specs_are_refused_when_the_config_is_built(spec, pattern):
    with pytest.raises(ConfigError, match=pattern):
        TrainConfig.from_dict({"augment": spec})
