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
