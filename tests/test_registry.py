import pytest

from transferkit.errors import ConfigError, UnknownNameError
from transferkit.registry import Registry


def test_register_get_and_suggestions():
    reg: Registry = Registry("widget")
    reg.register("alpha", 1)

    @reg.register("beta_gamma")
    def f():
        return 2

    assert reg.get("ALPHA") == 1 and reg.get("beta_gamma") is f
    assert reg.names() == ["alpha", "beta_gamma"] and "alpha" in reg and len(reg) == 2
    with pytest.raises(UnknownNameError, match="Did you mean 'beta_gamma'"):
        reg.get("beta_gama")
    with pytest.raises(LookupError, match="unknown widget 'zzz'"):
        reg.get("zzz")
    with pytest.raises(ConfigError, match="already registered"):
        reg.register("alpha", 3)


def test_every_method_is_found_whatever_was_imported_before():
    """A fresh interpreter that imported only the engine still finds every method's objective (the
    CLI's `distill -m kd -m l2sp` used to fail with "unknown objective 'l2sp'")."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from transferkit.engine import OBJECTIVES\n"
        "assert 'transferkit.transfer.regularize' not in sys.modules\n"
        "print(OBJECTIVES.get('l2sp').__name__, OBJECTIVES.get('dann').__name__, 'kd' in OBJECTIVES)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["L2SP", "DANN", "True"]


def test_registry_imports_its_modules_once_before_the_first_lookup(monkeypatch):
    from transferkit.registry import Registry

    imported = []
    monkeypatch.setattr("importlib.import_module", lambda name: imported.append(name))
    reg = Registry("thing", modules=("a.b", "c"))
    reg.register("x", 1)
    assert imported == []
    assert reg.get("x") == 1 and "x" in reg and reg.names() == ["x"]
    assert imported == ["a.b", "c"]


def test_registry_reads_like_a_mapping_and_is_patched_on_purpose(monkeypatch):
    reg: Registry = Registry("widget")
    reg.register("b", 2)
    reg.register("a", 1)
    assert reg["A"] == 1 and reg.get("zzz", None) is None and reg.get("a", 0) == 1
    assert list(reg) == reg.keys() == ["a", "b"] and reg.values() == [1, 2]
    assert reg.items() == [("a", 1), ("b", 2)] and {**reg} == {"a": 1, "b": 2}
    with pytest.raises(UnknownNameError, match="unknown widget 'c'"):
        reg["c"]
    # item assignment replaces on purpose (register refuses); monkeypatch.setitem undoes it
    with monkeypatch.context() as mp:
        mp.setitem(reg, "a", 10)
        mp.setitem(reg, "new", 3)
        assert reg.get("a") == 10 and reg.names() == ["a", "b", "new"]
    assert reg.get("a") == 1 and reg.names() == ["a", "b"]
    with pytest.raises(KeyError):
        del reg["new"]


REGISTRIES = [
    # module, registry, a typo, the name it should suggest, the kind named in messages
    ("transferkit.selection.scores", "SCORES", "logmee", "logme", "score"),
    ("transferkit.models.hub", "HUBS", "timmm", "timm", "model hub"),
    ("transferkit.transfer.adapt.monitor", "CRITERIA", "sdn", "snd", "model-choice criterion"),
]


@pytest.mark.parametrize(("module", "attr", "typo", "close", "kind"), REGISTRIES)
def test_scores_hubs_and_criteria_are_registries(module, attr, typo, close, kind):
    """Unknown names raise one line naming the name, a close match and every known name;
    registering a taken name raises and leaves the entry alone."""
    import importlib

    reg = getattr(importlib.import_module(module), attr)
    assert isinstance(reg, Registry) and reg.kind == kind
    with pytest.raises(UnknownNameError) as info:
        reg.get(typo)
    msg = str(info.value)
    assert msg.startswith(f"unknown {kind} '{typo}'. Did you mean '{close}'") and "\n" not in msg
    assert msg.endswith(f"Known: {', '.join(reg.names())}")
    before = reg.get(close)
    with pytest.raises(ConfigError, match=f"{kind} '{close}' is already registered"):
        reg.register(close, before)
    with pytest.raises(ConfigError, match="already registered"):
        reg.register(close.upper(), before)  # names are case-insensitive
    assert reg.get(close) is before


def test_name_of_finds_a_registered_object_without_loading_modules():
    from transferkit.registry import Registry

    reg = Registry("thing", modules=("no.such.module",))
    obj = object()
    reg.register("mine", obj)
    assert reg.name_of(obj) == "mine" and reg.name_of(object()) is None  # no import attempted
