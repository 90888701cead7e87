"""Atomic writes: a crash leaves the old file (or folder) or none, never half of one."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

OLD_SUFFIX = ".old"  # where a replaced folder waits until its successor is in place


def user_mode() -> int:
    """The permission bits a plain ``open(path, "w")`` would give a new file: 0o666 less the
    umask (the umask can only be read by setting it, so it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.
    The file ends with the mode any file the user makes gets (the temporary file is 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            os.fchmod(f.fileno(), user_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextmanager
def replace_dir(folder: str | Path) -> Iterator[Path]:
    """Write a folder atomically: the block fills the yielded temporary folder beside
    ``folder``; on success it takes ``folder``'s place (the old one is renamed to
    ``<folder>.old`` first and removed after, so a crash leaves one of the two whole), on
    error it is removed and ``folder`` is untouched."""
    folder = Path(folder)
    tmp, old = folder.with_name(folder.name + ".saving"), previous_dir(folder)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def previous_dir(folder: Path) -> Path:
    """Where `replace_dir` keeps ``folder``'s last version while it swaps the new one in."""
    return folder.with_name(folder.name + OLD_SUFFIX)


def read_json(path: str | Path, what: str):
    """The parsed JSON at ``path``; a missing file or bad JSON is one line naming ``what``."""
    import json

    from circuits.core.errors import CircuitsError

    path = Path(path)
    if not path.is_file():
        raise CircuitsError(f"{what} {path} does not exist")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CircuitsError(f"{what} {path}: not JSON ({err})") from None
