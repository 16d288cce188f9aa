"""Atomic file writes: write to a temporary sibling, fsync, then rename over the target.

A process killed mid-write (SIGKILL, power loss) leaves the target as it was plus, at worst, a
temporary ``.<name>.<8 random characters>.tmp`` beside it; :func:`remove_stale_temporaries` clears
those when a run starts again.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transferkit.errors import CheckpointError, DataNotFoundError

# The temporaries atomic_write creates: mkstemp(prefix=".<name>.", suffix=".tmp") adds 8 characters
# from [a-z0-9_]. Only names of exactly this shape are ever removed by remove_stale_temporaries.
_TMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


def atomic_write(path: str | os.PathLike, writer: Callable[[str], None]) -> Path:
    """Call ``writer(tmp_path)`` and atomically move the result to ``path``.

    The temporary file lives in the target's folder so the final ``os.replace`` is atomic; it is
    fsynced before the rename and the folder after it, so the new file survives a power loss once
    this returns. If ``writer`` raises, the temporary file is removed and ``path`` is left as it
    was; if the process is killed, ``path`` is the old or the new file, never a mix.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        writer(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_folder(path.parent)
    return path


def fsync_folder(folder: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename into it) to disk; a no-op where folders can't be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on folders; the rename itself still happened
        pass
    finally:
        os.close(fd)


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporaries a killed :func:`atomic_write` left in ``folder`` (not in sub-folders).

    Only regular files named like atomic_write's temporaries (``.<name>.<8 characters>.tmp``)
    are removed; call it when no other process writes into ``folder``.

    Returns:
        The removed paths (empty when ``folder`` does not exist).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in folder.iterdir():
        if _TMP_NAME.fullmatch(entry.name) and entry.is_file() and not entry.is_symlink():
            try:
                entry.unlink()
            except FileNotFoundError:  # gone meanwhile
                continue
            removed.append(entry)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def replace_folder(folder: str | os.PathLike, writer: Callable[[str], None]) -> Path:
    """Call ``writer(staging_folder)`` and put the result in place of ``folder``, replaced whole: the
    staging folder is a hidden sibling; an old ``folder`` is moved aside before the new one is renamed
    in and only then removed, so ``folder`` is never half-written (a kill between the two renames
    leaves the old one aside as ``.<name>.old``)."""
    import shutil

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging, old = folder.with_name(f".{folder.name}.partial"), folder.with_name(f".{folder.name}.old")
    for leftover in (staging, old):
        if leftover.exists():
            shutil.rmtree(leftover)
    writer(str(staging))
    if folder.exists():
        folder.rename(old)
        staging.rename(folder)
        shutil.rmtree(old)
    else:
        staging.rename(folder)
    return folder


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""

    def _w(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    return atomic_write(path, _w)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, with clear errors for a missing or corrupt file."""
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"file {str(path)!r} does not exist; check the path")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"{str(path)!r} is not valid JSON ({exc}); restore it or write it again"
        ) from exc
