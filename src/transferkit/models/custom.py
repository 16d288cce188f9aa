"""A user's own architecture: ``path/to/file.py:ClassName`` or ``package.module:ClassName``.

A source from another project is often a state dict plus the Python class that built it. Naming that
class as the architecture (``--source-arch my_cnn.py:MyCNN`` with ``--source weights.pth``) makes it
a model like any other: its head is found (the last ``nn.Linear``) or named (``--head fc_layers.2``),
its preprocessing is given (``--input-size``, ``--mean``, ``--std``) or read from the class
(attributes ``input_size``, ``mean``, ``std``, or a timm-style ``default_cfg`` / ``pretrained_cfg``
dict), it gets its own from-scratch baseline, and a saved model folder records the spec, the
constructor arguments, the head and the preprocessing, so it rebuilds.

Importing a file runs its code, so it happens only when the user names the code explicitly: the CLI
flags that take an architecture (``--source-arch``, ``--arch``) allow exactly the specs they were
given (:func:`allow_code`), and a Python caller passes the class itself or uses ``allow_code``. A spec
read from a config file or a saved ``config.json`` alone is refused, with the flag that allows it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from torch import nn

from transferkit.errors import ConfigError
from transferkit.models.base import TransferNet

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_CLASS = re.compile(rf"^{_IDENT}(\.{_IDENT})*$")
_MODULE = re.compile(rf"^{_IDENT}(\.{_IDENT})*$")

_ALLOWED: ContextVar[frozenset[str]] = ContextVar("transferkit_allowed_code", default=frozenset())


def is_code_spec(arch: Any) -> bool:
    """Whether ``arch`` names Python code: ``<file>.py:<Class>`` or ``<dotted.module>:<Class>``."""
    if not isinstance(arch, str) or ":" not in arch:
        return False
    from transferkit.models.hub import HUBS

    where, _, name = arch.rpartition(":")
    if not _CLASS.match(name) or not where:
        return False
    if where.endswith(".py"):
        return True
    return bool(_MODULE.match(where)) and where.lower() not in HUBS


def normalise_spec(arch: str) -> str:
    """The canonical form of a code spec: a file's absolute path, a module as written."""
    where, _, name = arch.rpartition(":")
    if where.endswith(".py"):
        where = str(Path(where).expanduser().resolve())
    return f"{where}:{name}"


def spec_of_class(cls: type) -> str:
    """``"module:QualName"`` of a class (the spec that rebuilds it by importing its module)."""
    module = cls.__module__
    loaded = sys.modules.get(module)
    file = getattr(loaded, "__file__", None)
    if loaded is None:  # imported from a file by hand: name the file
        try:
            file = inspect.getsourcefile(cls)
        except TypeError:
            file = None
    if (loaded is None or module == "__main__" or module.startswith("transferkit_user_code.")) and file:
        return f"{Path(file).resolve()}:{cls.__qualname__}"
    return f"{module}:{cls.__qualname__}"


@contextmanager
def allow_code(*specs: str | type) -> Iterator[None]:
    """Let models built inside the block import and run the named architectures' code.

    The CLI wraps a command in it with the specs its flags were given; a spec read from a file is
    built only when one of these names it. Passing a class allows its own spec.

    Example:
        >>> with allow_code("my_cnn.py:MyCNN"):  # doctest: +SKIP
        ...     model = load_model("runs/ft/model")
    """
    names = set(_ALLOWED.get())
    for spec in specs:
        if isinstance(spec, type):
            names.add(spec_of_class(spec))
        elif is_code_spec(spec):
            names.add(normalise_spec(spec))
        else:
            raise ConfigError(
                f"allow_code takes specs like 'my_cnn.py:MyCNN' or 'package.module:MyCNN', or classes; "
                f"got {spec!r}"
            )
    token = _ALLOWED.set(frozenset(names))
    try:
        yield
    finally:
        _ALLOWED.reset(token)


def code_allowed(spec: str) -> bool:
    """Whether ``spec`` was allowed by :func:`allow_code` in this context."""
    return normalise_spec(spec) in _ALLOWED.get()


def import_class(spec: str) -> type[nn.Module]:
    """Import the ``nn.Module`` class a code spec names (it must have been allowed).

    Raises:
        ConfigError: the spec was not allowed, the file or module is missing, it fails to import,
            or the name is not an ``nn.Module`` class.
    """
    spec = normalise_spec(spec)
    if not code_allowed(spec):
        raise ConfigError(
            f"architecture {spec!r} is Python code, and transferkit runs code only when you name it "
            f"yourself: pass --source-arch {spec} (or --arch) on the command line; in Python pass the "
            "class (arch=MyNet) or build inside `with transferkit.models.allow_code(...)`"
        )
    where, _, name = spec.rpartition(":")
    module = _import_file(Path(where)) if where.endswith(".py") else _import_module(where)
    obj: Any = module
    for part in name.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            found = sorted(
                n for n, v in vars(module).items() if isinstance(v, type) and issubclass(v, nn.Module)
            )
            raise ConfigError(
                f"{where!r} defines no {name!r}; its nn.Module classes: {', '.join(found) or 'none'}"
            )
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise ConfigError(f"{spec!r} is a {type(obj).__name__}, not an nn.Module class")
    return obj


def _import_file(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"architecture file {str(path)!r} does not exist; check the path before ':'")
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:10]
    name = f"transferkit_user_code.{re.sub(r'[^0-9A-Za-z_]', '_', path.stem)}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot import {str(path)!r} as Python code")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise ConfigError(f"importing {str(path)!r} failed: {type(exc).__name__}: {exc}") from exc
    return module


def _import_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ConfigError(
            f"cannot import module {name!r} ({exc}); give a file instead: path/to/file.py:ClassName"
        ) from exc


def _class_preprocessing(cls: type) -> dict[str, Any]:
    """``input_size``, ``mean``, ``std`` a class declares (attributes or a timm-style cfg dict)."""
    out: dict[str, Any] = {}
    for holder in (getattr(cls, "default_cfg", None), getattr(cls, "pretrained_cfg", None)):
        if isinstance(holder, Mapping):
            out.update({k: holder[k] for k in ("input_size", "mean", "std") if k in holder})
    for key in ("input_size", "mean", "std"):
        value = getattr(cls, key, None)
        if isinstance(value, (list, tuple)) and key not in out:
            out[key] = value
    return out


def build_code_model(
    spec: str | type,
    num_classes: int,
    pretrained: bool = False,
    *,
    init: Mapping[str, Any] | None = None,
    head: str | None = None,
    input_size: Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> TransferNet:
    """Build the user's class ``spec`` with ``init`` and wrap it as a :class:`TransferNet`.

    Args:
        spec: ``path/file.py:Class``, ``package.module:Class`` (allowed by :func:`allow_code`) or the
            class itself.
        num_classes: Head size (a new ``Linear`` head when the class's head has another size).
        pretrained: Must be False: a class has no weights by name (load them with ``--source``).
        init: Constructor arguments (JSON values).
        head: Dotted name of the classifier submodule; default: one called ``head``, else the last
            ``nn.Linear``.
        input_size, mean, std: The model's input; default: what the class declares.

    Raises:
        ConfigError: the code is not allowed or can't be imported, the constructor refuses ``init``,
            the head can't be found, or the input size is unknown.
    """
    from transferkit.models.zoo import wrap_model  # zoo imports this module

    if pretrained:
        raise ConfigError(
            f"architecture {spec!r} has no pretrained weights by name; give its weights file with "
            "--source FILE (or use --no-pretrained)"
        )
    if isinstance(spec, type):
        cls = spec
        with allow_code(cls):
            spec = spec_of_class(cls)
    else:
        spec = normalise_spec(spec)
        cls = import_class(spec)
    declared = _class_preprocessing(cls)
    input_size = input_size if input_size is not None else declared.get("input_size")
    if input_size is None:
        raise ConfigError(
            f"cannot tell the input size of {cls.__name__}; give it: --input-size C,H,W "
            "(input_size=[C, H, W]), or declare `input_size = (C, H, W)` on the class"
        )
    init = dict(init or {})
    try:
        inspect.signature(cls).bind(**init)
    except TypeError as exc:
        raise ConfigError(
            f"{cls.__name__}({', '.join(init)}) does not fit its constructor {inspect.signature(cls)}: "
            f"{exc}; give its arguments as model.kwargs.init"
        ) from None
    module = cls(**init)
    model = wrap_model(
        module,
        num_classes=num_classes,
        input_size=tuple(input_size),
        mean=mean if mean is not None else declared.get("mean"),
        std=std if std is not None else declared.get("std"),
        head=head,
    )
    info = model.info
    info.arch = spec
    info.kwargs = {
        "init": init,
        "head": info.classifier,
        "input_size": list(info.input_size),
        "mean": list(info.mean) if info.mean is not None else None,
        "std": list(info.std) if info.std is not None else None,
    }
    info.source = "random init"
    return model
