"""Every objective declares its options: a pydantic ``Options`` model checked before anything runs.

The registry-wide rules (each registered class has its own model, every field documented, exactly one
trade-off field, the model's defaults agree with the constructor's and build the objective), then
:func:`validate_method_spec` (one message naming every problem) and the base-class check that direct
construction goes through.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from pydantic import BaseModel, Field

from transferkit.data import TensorDataset
from transferkit.engine.objectives import (
    CONTEXT_ARGS,
    OBJECTIVES,
    TRADE_OFF,
    Objective,
    ObjectiveOptions,
    build_objectives,
    validate_method_spec,
)
from transferkit.errors import ConfigError, UnknownNameError
from transferkit.models import create_model
from transferkit.transfer.distill import LogitKD, Teacher
from transferkit.transfer.regularize import EWC
from transferkit.workflows.adapt import _method_grid

NAMES = OBJECTIVES.names()


def _cnn(num_classes: int = 10):
    return create_model("small_cnn", num_classes=num_classes, in_channels=1, image_size=8,
                        widths=(4, 8), feature_dim=16)


#: Objectives whose teacher must be a text transformer (they read its attention projections).
TEXT_TEACHER = ("self_attention",)


def _context(name: str = "") -> dict[str, object]:
    """The objects workflows pass: a teacher (a small text transformer for :data:`TEXT_TEACHER`,
    else a CNN), a source model with its head, source data."""
    torch.manual_seed(0)
    data = TensorDataset(torch.rand(8, 1, 8, 8), torch.arange(8) % 5, name="tiny-source")
    teacher = (create_model("text_transformer", num_classes=5, hidden=32, heads=2, layers=1)
               if name in TEXT_TEACHER else _cnn())
    return {"teacher": Teacher(teacher), "source": _cnn(5), "source_data": data}


def _params(cls: type) -> dict[str, inspect.Parameter]:
    return {k: p for k, p in inspect.signature(cls.__init__).parameters.items()
            if k != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


# ------------------------------------------------------------------------- every registered class
@pytest.mark.parametrize("name", NAMES)
def test_every_objective_declares_its_own_documented_options(name):
    cls = OBJECTIVES.get(name)
    assert "Options" in vars(cls), f"{cls.__name__} inherits its Options instead of declaring them"
    assert issubclass(cls.Options, ObjectiveOptions) and cls.Options.__doc__
    assert cls.Options.model_config["extra"] == "forbid"
    for key, field in cls.Options.model_fields.items():
        assert field.description, f"{name}.Options.{key} has no description"
        assert not field.is_required(), f"{name}.Options.{key} has no default"


@pytest.mark.parametrize("name", NAMES)
def test_exactly_one_option_is_the_trade_off(name):
    cls = OBJECTIVES.get(name)
    marked = [k for k, f in cls.Options.model_fields.items()
              if isinstance(f.json_schema_extra, dict) and f.json_schema_extra.get("trade_off")]
    assert len(marked) == 1, (name, marked)
    assert cls.trade_off_option() == marked[0] == ("trade_off" if name == "mcd" else "weight")


@pytest.mark.parametrize("name", NAMES)
def test_options_agree_with_the_constructor(name):
    """Every option is a constructor argument with the same default; every other argument is an
    object a workflow passes (teacher, source, ...), never a value a config could set."""
    cls = OBJECTIVES.get(name)
    params = _params(cls)
    defaults = cls.Options().model_dump()
    for key, value in defaults.items():
        assert key in params, f"{name} option {key!r} is not a constructor argument"
        assert params[key].default == value, (name, key, params[key].default, value)
    assert set(params) - set(defaults) <= set(CONTEXT_ARGS), (name, set(params) - set(defaults))


@pytest.mark.parametrize("name", NAMES)
def test_defaults_build_the_objective(name):
    """``{name: <name>}`` validates and builds, with no context where the objective needs none."""
    cls = OBJECTIVES.get(name)
    assert validate_method_spec({"name": name}) == {"name": name}
    needs = [k for k in _params(cls) if k in CONTEXT_ARGS]
    context = _context(name) if needs else {}
    (built,) = build_objectives([{"name": name}], **context)
    assert type(built) is cls and built.name == name
    assert built.options == cls.Options() and built.weight == cls.Options().weight
    if not needs:
        assert type(cls()) is cls  # and straight from Python


def test_objects_are_context_not_options():
    with pytest.raises(ConfigError, match="'teacher' is not an option: the workflow passes it"):
        validate_method_spec({"name": "kd", "teacher": "models/teacher"})
    with pytest.raises(ConfigError, match="'source_data' is not an option"):
        validate_method_spec({"name": "ewc", "source_data": "mnist5k"})


# ------------------------------------------------------------------------- validate_method_spec
def test_one_error_names_every_bad_option_at_once():
    with pytest.raises(ConfigError) as info:
        validate_method_spec({"name": "kd", "temperature": -1, "temprature": 4, "weight": "big"})
    msg = str(info.value)
    assert msg.startswith("objective 'kd': ")
    assert "temperature=-1: must be > 0" in msg
    assert "does not take 'temprature' (did you mean 'temperature'?)" in msg
    assert "weight='big': must be a number" in msg
    assert msg.endswith("known options: weight, temperature, teacher_weights, unlabeled")
    assert "\n" not in msg


def test_validated_spec_holds_the_options_given_as_validated():
    assert validate_method_spec({"name": "KD", "temperature": 2}) == {"name": "kd", "temperature": 2.0}
    assert validate_method_spec({"name": "l2sp", "exclude": "fc.*"}) == {"name": "l2sp",
                                                                        "exclude": ("fc.*",)}
    assert validate_method_spec({"name": "delta", "layers": "backbone.conv1"})["layers"] == [
        "backbone.conv1"]


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"name": "rkd", "distance_weight": 0, "angle_weight": 0}, "'rkd': .*both 0"),
        ({"name": "fsp", "student_pairs": [["a", "b"]]}, "both student_pairs and teacher_pairs"),
        ({"name": "fsp", "student_pairs": [["a", "b"]], "teacher_pairs": [["a", "b"], ["c", "d"]]},
         r"^objective 'fsp': student_pairs has 1 pair\(s\) but teacher_pairs 2"),
        ({"name": "attention", "pairs": [["a"]]}, r"pairs=\[\['a'\]\]: item 0.1 is missing"),
        ({"name": "bss", "k": 2.0}, "k=2.0: must be an integer"),
        ({"name": "dann", "schedule": "linear"}, "schedule='linear': must be one of 'ganin', 'constant'"),
        ({"name": "ewc", "max_examples": 0, "kind": "fake"},
         "max_examples=0: must be >= 1.*kind='fake'|kind='fake'.*max_examples=0: must be >= 1"),
        ({"name": "hint", "student_layer": ""}, "student_layer='': "),
        ({"name": "cdan_e", "seed": -1}, "'cdan_e': seed=-1: must be >= 0"),
    ],
)
def test_rules_between_and_within_options(spec, match):
    with pytest.raises(ConfigError, match=match):
        validate_method_spec(spec)


def test_spec_without_a_name_or_registered_name():
    with pytest.raises(ConfigError, match="has no 'name'"):
        validate_method_spec({"temperature": 4})
    with pytest.raises(ConfigError, match="is a mapping"):
        validate_method_spec(["kd"])  # type: ignore[arg-type]
    with pytest.raises(UnknownNameError, match="Did you mean 'kd'"):
        validate_method_spec({"name": "kdd"})


def test_build_objectives_passes_context_but_a_given_option_wins(tmp_path):
    ctx = _context()
    (kd,) = build_objectives([{"name": "kd", "temperature": 2}], **ctx)
    assert kd.temperature == 2.0 and kd.teachers == [ctx["teacher"]]
    given, passed = str(tmp_path / "given"), str(tmp_path / "passed")
    (ewc,) = build_objectives([{"name": "ewc", "cache_dir": given}], cache_dir=passed, **ctx)
    assert ewc.cache_dir == given
    (ewc,) = build_objectives([{"name": "ewc"}], cache_dir=passed, **ctx)
    assert ewc.cache_dir == passed
    with pytest.raises(ConfigError, match=r"objective #2 .* has no 'name'"):
        build_objectives([{"name": "kd"}, {"weight": 1}], **ctx)


# ------------------------------------------------------------------------- direct construction
def test_direct_construction_is_checked_once_by_the_base_class():
    teacher = _context()["teacher"]
    with pytest.raises(ConfigError, match=r"^objective 'kd': temperature=-1: must be > 0"):
        LogitKD(teacher, temperature=-1)
    kd = LogitKD(teacher, temperature=3, weight=0)
    assert kd.options.temperature == kd.temperature == 3.0 and kd.weight == 0.0
    every = r"'ewc': lam=-1: must be >= 0.*max_examples=1.5: must be an integer"
    with pytest.raises(ConfigError, match=every):
        EWC(lam=-1, max_examples=1.5)  # every bad option at once, before the object checks


def test_trade_off_grid_uses_the_marked_option():
    grid = _method_grid([{"name": "mcd"}, {"name": "dann"}, {"name": "dan", "weight": 0.5}], [0.1, 1.0])
    assert [(n, w, {k: v for k, v in s.items() if k != "name"}) for n, w, s in grid] == [
        ("mcd", 0.1, {"trade_off": 0.1}), ("mcd", 1.0, {"trade_off": 1.0}),
        ("dann", 0.1, {"weight": 0.1}), ("dann", 1.0, {"weight": 1.0}),
        ("dan", 0.5, {"weight": 0.5}),
    ]


class _Plain(Objective):
    """An objective of a user's own: it may declare no options beyond ``weight``."""

    def forward(self, batch):  # pragma: no cover - never run
        return batch.logits.sum()


class _TwoMarks(Objective):
    class Options(ObjectiveOptions):
        """Two trade-offs: a mistake."""

        other: float = Field(1.0, description="Another weight.", json_schema_extra=TRADE_OFF)


class _NoMark(Objective):
    class Options(BaseModel):
        """No trade-off at all."""

        weight: float = Field(1.0, description="Weight.")


def test_user_objectives_and_mis_marked_options():
    assert _Plain(weight=2).weight == 2.0 and _Plain.trade_off_option() == "weight"
    with pytest.raises(ConfigError, match=r"objective '_plain': does not take 'scale'"):
        _Plain(scale=2)
    for cls, found in ((_TwoMarks, r"\['weight', 'other'\]"), (_NoMark, "none")):
        with pytest.raises(TypeError, match=f"exactly one field as the trade-off.*found {found}"):
            cls.trade_off_option()
