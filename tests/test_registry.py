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
