"""Files written so that no reader ever sees half of one: a temp file beside the target, then a rename."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Union

from .errors import OdenetError


def regular_file(path: Union[str, Path], what: str) -> Path:
    """``path`` when it names a regular file; else one line: ``"<what> not found: <path>"``, or, for a device, pipe
    or socket (reading one can block forever or never end), that it is not a regular file. Checked before opening."""
    p = Path(path)
    if p.is_file():
        return p
    if p.exists() and not p.is_dir():
        raise OdenetError(f"{what} {path} is not a regular file (a device, pipe or socket)")
    raise OdenetError(f"{what} not found: {path}")


def atomic_write_bytes(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(file_object)`` on a temp file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # mkstemp makes 0600: give the file the user's umask
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def write_once(folder: Path, name: str, data: bytes) -> Path:
    """``folder/name`` holding ``data``, written atomically unless it exists: for content-addressed names.

    A file that exists is never rewritten, so a reader streaming it (a web server) can't see it change.
    """
    path = Path(folder) / name
    if not path.exists():
        atomic_write_bytes(path, lambda f: f.write(data))
    return path
