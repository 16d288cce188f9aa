"""A workflow's output folder: never clobbered, never mixed, never half-replaced.

Every workflow (``finetune``, ``distill``, ``adapt``, the demo) writes into one folder and records in
``run.json`` what the run is: the resolved config, a fingerprint of every dataset (sizes and a hash
of the tensors), of every source model (a hash of its weights), the shots and the seeds. Then:

* a folder that does not exist, or is empty, is used as it is;
* ``resume=True`` continues a run only when ``run.json`` describes the same run; any difference is
  refused, listed key by key (a changed ``--shots``, ``--data`` or ``--source`` can't silently
  reuse finished arms);
* ``overwrite=True`` trains in a staging folder inside the output folder (``.staging/``) and swaps
  the new results in only when the run has finished: a run that fails or is killed leaves the earlier
  results byte-identical;
* anything else that holds files is refused, with the three ways out.

Nothing is created before :func:`open_output` is called, so workflows validate everything (config,
data, models, objectives) first and a typo never touches the folder.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import transferkit
from transferkit.errors import ConfigError
from transferkit.io import atomic_write_json
from transferkit.io.files import remove_stale_temporaries
from transferkit.io.weights import tensor_digest

logger = logging.getLogger(__name__)

MANIFEST = "run.json"
FORMAT = "transferkit-run"
STAGING = ".staging"
_OLD = ".replaced"
# Config keys that say how to run, not what: they may differ on --resume.
VOLATILE_KEYS = frozenset({"out", "resume", "overwrite", "train.progress"})
# Data options added after runs were recorded (last part of the key -> the value those runs had): a
# record without the key equals one with that value, so their runs still resume.
ADDED_KEYS: dict[str, Any] = {"text_column": "text", "label_column": "label", "ordered": False,
                              "unlabeled": None, "unlabeled_size": None}


# ---------------------------------------------------------------------------------- fingerprints
_COMMAND_LINE: list[str] | None = None


def set_command_line(args: list[str] | None) -> None:
    """Record the command line a CLI command was called with (its metrics and reports show it)."""
    global _COMMAND_LINE
    _COMMAND_LINE = list(args) if args is not None else None


def command_line() -> str | None:
    """``"transferkit finetune --source ..."`` when the run came from the CLI, else ``None``."""
    if _COMMAND_LINE is None:
        return None
    return " ".join(shlex.quote(a) for a in ["transferkit", *_COMMAND_LINE])


def describe_run(
    kind: str,
    *,
    fingerprints: Mapping[str, Any],
    shots: int | None,
    val_shots: int | None,
    seeds: list[int],
    recipe: Mapping[str, Any],
    baseline: str,
    student: Mapping[str, Any] | None = None,
    data_use: str | None = None,
) -> dict[str, Any]:
    """What a run measured, for ``metrics.json`` (``"about"``) and the report's notes: the command
    line, transferkit's version, each source (spec, architecture, weights hash), the target data
    (spec, split sizes, classes, hash), shots, seeds, the recipe and what the baseline is.

    Args:
        kind: The workflow (``finetune``, ``distill``, ``adapt``).
        fingerprints: :func:`model_fingerprint` / :func:`data_fingerprint` entries by role:
            ``source`` (or ``sources``, a list), ``data`` (the target), ``source_data`` (the source
            task's data, or in ``adapt`` the source domain) and ``teacher`` (``distill``). A
            ``teacher`` entry is recorded as ``"teacher"`` (absent otherwise).
        shots, val_shots: Examples per class of training and validation (``None``: all).
        seeds: The seeds.
        recipe: How the arms trained (flat; a list of ``{"name": ...}`` objectives is shown by name
            with its options).
        baseline: What the baseline is, in words (or that there is none).
        student: ``distill``'s student (spec, arch, kwargs, params, start), recorded as
            ``"student"`` when given.
        data_use: What each split is used for, when ``shots`` can't say it (``adapt``: labelled
            source, unlabelled target); recorded as ``"data_use"`` when given.
    """
    sources = fingerprints.get("sources") or ([fingerprints["source"]] if fingerprints.get("source") else [])
    about: dict[str, Any] = {
        "kind": kind,
        "command": command_line(),
        "transferkit_version": transferkit.__version__,
        "sources": list(sources),
    }
    if fingerprints.get("teacher"):
        about["teacher"] = dict(fingerprints["teacher"])
    if student is not None:
        about["student"] = dict(student)
    about.update({
        "target": fingerprints.get("data"),
        "source_data": fingerprints.get("source_data"),
        "shots": shots,
        "val_shots": val_shots if val_shots is not None else shots,
        "seeds": list(seeds),
    })
    if data_use is not None:
        about["data_use"] = data_use
    about.update({"recipe": dict(recipe), "baseline": baseline})
    return about


def _model_line(label: str, fp: Mapping[str, Any]) -> str:
    options = fp.get("options")
    own = "; its own options " + ", ".join(f"{k} {v}" for k, v in options.items()) if options else ""
    return (f"{label}: {fp['spec']} ({fp['arch']}, {fp['params']:,} values, weights sha256 "
            f"{fp['weights_sha256'][:12]}{own}).")


def _data_line(label: str, fp: Mapping[str, Any]) -> str:
    sizes = ", ".join(f"{fp[f'{s}_size']:,} {s}" for s in ("train", "val", "test") if f"{s}_size" in fp)
    return f"{label}: {fp.get('spec')} ({fp.get('num_classes')} classes; splits {sizes})."


def describe_methods(methods: Any) -> str:
    """``[{"name": "kd", "weight": 0.5, "temperature": 2}, ...]`` -> ``kd (weight 0.5, temperature 2)
    + ...``; anything else as ``str``."""
    if not isinstance(methods, (list, tuple)) or not methods or not all(
        isinstance(m, Mapping) and "name" in m for m in methods
    ):
        return str(methods)
    parts = []
    for m in methods:
        opts = ", ".join(f"{k} {v}" for k, v in m.items() if k != "name")
        parts.append(f"{m['name']} ({opts})" if opts else str(m["name"]))
    return " + ".join(parts)


def method_weights(methods: Any) -> list[dict[str, Any]]:
    """Objective entries (``{"name": "kd", "temperature": 2}``) as recorded in a run's ``about``:
    the registered name, the weight it trains with (the objective's default when not given) and the
    other options as given."""
    from transferkit.engine.objectives import OBJECTIVES, validate_method_spec

    out = []
    for spec in methods:
        given = validate_method_spec(spec)
        name = str(given.pop("name"))
        weight = OBJECTIVES.get(name).validate_options(given).model_dump().get("weight")
        entry: dict[str, Any] = {"name": name}
        if weight is not None:
            entry["weight"] = weight
        entry.update(given)
        out.append(_jsonable(entry))
    return out


def describe_lines(about: Mapping[str, Any]) -> list[str]:
    """The report's lines for :func:`describe_run`'s dict."""
    lines = []
    adapt = about.get("kind") == "adapt"
    if about.get("command"):
        lines.append(f"Command: {about['command']} (transferkit {about['transferkit_version']}).")
    else:
        lines.append(f"Run from Python with transferkit {about['transferkit_version']}.")
    if about.get("teacher"):
        lines.append(_model_line("Teacher", about["teacher"]))
    student = about.get("student")
    if student:
        start = student.get("start")
        origin = (f"starting from the weights of {start['spec']} (sha256 {start['weights_sha256'][:12]})"
                  if start else "fresh weights")
        lines.append(f"Student: {student.get('spec')} = {student.get('arch')} {student.get('kwargs')} "
                     f"({student.get('params'):,} parameters), {origin}.")
    for src in about.get("sources") or []:
        lines.append(_model_line("Source model" if adapt else "Source", src))
    if about.get("source_data"):
        lines.append(_data_line("Source domain" if adapt else "Source data", about["source_data"]))
    target = about.get("target") or {}
    if target:
        lines.append(_data_line("Target domain" if adapt else "Target", target))
    if about.get("data_use"):
        lines.append(f"Data per seed: {about['data_use']}; seeds {about.get('seeds')}.")
    else:
        shots = about.get("shots")
        per_class = (f"{shots} training and {about.get('val_shots')} validation examples per class" if shots
                     else "all training and validation examples")
        lines.append(f"Data per seed: {per_class}; seeds {about.get('seeds')}; test on the whole test split.")
    recipe = ", ".join(f"{k} {describe_methods(v)}" for k, v in (about.get("recipe") or {}).items())
    if recipe:
        lines.append(f"Recipe: {recipe}.")
    lines.append(f"Baseline: {about.get('baseline')}.")
    return lines


def model_fingerprint(model: torch.nn.Module | None, spec: str | None = None) -> dict[str, Any] | None:
    """What a source model is: its spec (path or name), architecture and a hash of its weights."""
    if model is None:
        return None
    info = getattr(model, "info", None)
    state = model.state_dict()
    return {
        "spec": spec,
        "arch": getattr(info, "arch", type(model).__name__),
        "params": int(sum(v.numel() for v in state.values())),
        "weights_sha256": tensor_digest(sorted(state.items())),
    }


def _inputs_tensor(ds: Any) -> torch.Tensor:
    """A dataset's inputs as one tensor to hash: ``x``, or a text dataset's UTF-8 bytes."""
    texts = getattr(ds, "texts", None)
    if isinstance(texts, list):
        raw = bytearray("\0".join(texts).encode("utf-8", "surrogatepass"))
        return torch.frombuffer(raw, dtype=torch.uint8) if raw else torch.zeros(0, dtype=torch.uint8)
    return ds.x


def data_fingerprint(splits: Any, spec: str | None = None) -> dict[str, Any]:
    """What a dataset is: its spec (name or path), split sizes, classes and a hash of the tensors;
    of one dataset without splits (an unlabelled pool): its size and the hash of its inputs."""
    out: dict[str, Any] = {"spec": spec}
    parts = []
    for split in ("train", "val", "test"):
        ds = getattr(splits, split, None)
        if ds is None:
            continue
        out[f"{split}_size"] = len(ds)
        parts += [(f"{split}.x", _inputs_tensor(ds)), (f"{split}.y", ds.y)]
    if not parts and hasattr(splits, "y"):
        out["size"] = len(splits)
        parts = [("x", _inputs_tensor(splits)), ("y", splits.y)]
    out["num_classes"] = int(getattr(splits, "num_classes", 0) or 0)
    out["sha256"] = tensor_digest(parts)
    return out


# ---------------------------------------------------------------------------------- the folder
@dataclass
class OutputFolder:
    """An opened output folder.

    Attributes:
        root: The folder the user named.
        work: Where this run writes: ``root``, or ``root/.staging`` when replacing earlier results.
        replacing: Whether :meth:`commit` swaps ``work`` in over earlier results.
    """

    root: Path
    work: Path
    replacing: bool = False

    def commit(self) -> None:
        """Make the finished run the folder's content (a no-op unless replacing)."""
        if not self.replacing:
            return
        old = self.root / _OLD
        if old.exists():
            shutil.rmtree(old)
        old.mkdir()
        for entry in self.root.iterdir():
            if entry.name not in (STAGING, _OLD):
                os.replace(entry, old / entry.name)
        for entry in self.work.iterdir():
            os.replace(entry, self.root / entry.name)
        self.work.rmdir()
        shutil.rmtree(old)
        self.work, self.replacing = self.root, False


def _results(folder: Path) -> list[str]:
    """Names of what ``folder`` holds, leaving out leftovers of an interrupted replacement."""
    return sorted(p.name for p in folder.iterdir() if p.name not in (STAGING, _OLD))


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``key: old -> new`` for every key whose value differs (volatile keys left out)."""
    a, b = flatten(old), flatten(new)
    out = []
    for key in sorted(set(a) | set(b)):
        short = key.removeprefix("config.")
        if short in VOLATILE_KEYS:
            continue
        va, vb = a.get(key, "(absent)"), b.get(key, "(absent)")
        added = ADDED_KEYS.get(key.rsplit(".", 1)[-1], "(absent)")
        recorded_before = (va == "(absent)" and vb == added) or (vb == "(absent)" and va == added)
        if va != vb and not recorded_before:
            out.append(f"{short}: {_short(va)} -> {_short(vb)}")
    return out


def _short(v: Any) -> str:
    text = json.dumps(v) if not isinstance(v, str) else v
    if len(text) > 40 and all(c in "0123456789abcdef" for c in text):
        return text[:12] + "…"
    return text if len(text) <= 60 else text[:57] + "..."


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def open_output(
    out: str | os.PathLike,
    identity: Mapping[str, Any],
    *,
    resume: bool = False,
    overwrite: bool = False,
    kind: str = "run",
) -> OutputFolder:
    """Check and open the output folder of a run described by ``identity``.

    Args:
        out: The output folder.
        identity: What the run is (config, data and source fingerprints); JSON-serialisable.
        resume: Continue the run already in ``out`` (refused when ``identity`` differs).
        overwrite: Replace earlier results in ``out``, but only once the new run has finished.
        kind: The workflow's name, recorded in ``run.json``.

    Raises:
        ConfigError: ``out`` is a file; it holds results and neither ``resume`` nor ``overwrite`` is
            set; ``resume`` with a different run; both flags at once; or it can't be written; or the
            process was launched as one of several data-parallel processes (the workflows write
            their reports from one process; train data-parallel with ``Trainer.fit`` under torchrun).
    """
    world = os.environ.get("WORLD_SIZE", "1") or "1"
    if world.isdigit() and int(world) > 1:
        raise ConfigError(
            f"the {kind} workflow runs in one process, but this one was launched as one of {world} "
            "(WORLD_SIZE); launch it without torchrun, or train data-parallel from Python with "
            "Trainer.fit under torchrun (see the README)"
        )
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other; pass one of them")
    root = Path(out)
    identity = _jsonable(dict(identity))
    try:
        if root.exists() and not root.is_dir():
            raise ConfigError(f"output folder {str(root)!r} is a file; choose a folder path with --out")
        held = _results(root) if root.is_dir() else []
        if held and resume:
            _check_same_run(root, identity)
            folder = OutputFolder(root, root)
        elif held and overwrite:
            staging = root / STAGING
            if staging.exists():
                shutil.rmtree(staging)  # a replacement that never finished
            staging.mkdir()
            folder = OutputFolder(root, staging, replacing=True)
        elif held:
            shown = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
            raise ConfigError(
                f"output folder {str(root)!r} already holds results ({shown}); pass --resume to "
                "continue that run, --overwrite to replace it (the old results stay until the new run "
                "finishes), or choose another --out"
            )
        else:
            root.mkdir(parents=True, exist_ok=True)
            folder = OutputFolder(root, root)
        for leftover in (STAGING, _OLD):
            if folder.work == root and (root / leftover).exists():
                shutil.rmtree(root / leftover)
        _remove_stale_temporaries(folder.work)
        manifest = {"format": FORMAT, "kind": kind, "version": transferkit.__version__,
                    "identity": identity}
        atomic_write_json(folder.work / MANIFEST, manifest)
    except (OSError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(
            f"cannot write the output folder {str(root)!r}: {reason}; choose a writable folder with --out"
        ) from None
    return folder


def _check_same_run(root: Path, identity: Mapping[str, Any]) -> None:
    path = root / MANIFEST
    if not path.is_file():
        raise ConfigError(
            f"--resume: {str(root)!r} holds no {MANIFEST}, so what it was trained on is unknown; "
            "pass --overwrite to replace it or choose another --out"
        )
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        old = saved["identity"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(
            f"--resume: {str(path)!r} is not a readable run record; pass --overwrite to replace the "
            "run or choose another --out"
        ) from None
    diff = differences(old, identity)
    if diff:
        shown = "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
        raise ConfigError(
            f"--resume: {str(root)!r} was trained on something else ({shown}); rerun with the "
            "same settings, or pass --overwrite to replace it, or choose another --out"
        )


def _remove_stale_temporaries(folder: Path) -> None:
    """Temporaries of atomic writes a killed run left anywhere under ``folder``."""
    for dirpath, _, _ in os.walk(folder):
        remove_stale_temporaries(dirpath)


__all__ = [
    "MANIFEST",
    "OutputFolder",
    "data_fingerprint",
    "describe_lines",
    "describe_methods",
    "describe_run",
    "differences",
    "method_weights",
    "model_fingerprint",
    "open_output",
    "tensor_digest",
]
