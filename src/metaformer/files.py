"""Files: which paths may be opened, and writes that a kill or a full disk cannot leave half done."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import tempfile
from pathlib import Path

from .errors import FileWriteError

TEMPORARY_MARK = ".tmp-"  # in the names of files being written: ".<name>.tmp-<random>"
_UMASK = os.umask(0o022)  # read once (it can only be read by setting it), then restored
os.umask(_UMASK)


def file_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be read as a regular file, or None if it can.

    Opening a FIFO blocks until another process writes to it, and a device may never end, so only regular files
    (or links to them) are opened. A link loop is named as one, not as a missing file.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "no such file" + (" (a broken symbolic link)" if os.path.islink(path) else "")
    except PermissionError:
        return "permission denied"
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "a symbolic link loop"
        if error.errno == errno.ENOTDIR:
            return "no such file (a part of its path is not a folder)"
        return error.strerror or str(error)
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder, not a file"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe), not a regular file"
    if stat.S_ISSOCK(mode):
        return "a socket, not a regular file"
    return "a device, not a regular file"


def atomic_write(path: str | os.PathLike, data: bytes | memoryview | str) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder, renamed into place once complete.

    A kill leaves either the previous file or the new one, never a partial file (at worst an orphan temporary,
    which ``remove_temporaries`` deletes). A failed write (disk full, no permission) raises ``FileWriteError``
    naming the file and the system's reason, and leaves the previous file as it was.
    """
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}{TEMPORARY_MARK}")
        tmp = Path(name)
        os.fchmod(handle, 0o666 & ~_UMASK)  # as open() would create it; mkstemp's files are private
        with os.fdopen(handle, "wb") as file:
            file.write(payload)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as error:
        reason = error.strerror or str(error)
        kept = f"; the previous {path.name} is kept" if path.exists() else ""
        raise FileWriteError(f"could not write {path}: {reason}{kept}") from error
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()
    return path


def write_json(path: str | os.PathLike, value: object) -> Path:
    return atomic_write(path, json.dumps(value, indent=2) + "\n")


def read_json_object(path: Path, error: type[Exception], expected: str) -> dict:
    """A JSON file that must hold an object, or ``error`` naming the file and what is wrong (``expected``: what
    the object is, for the message)."""
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as raised:
        raise error(f"{path}: not valid JSON ({raised})") from raised
    except OSError as raised:
        raise error(f"{path}: {raised.strerror or raised}") from raised
    if not isinstance(value, dict):
        raise error(f"{path}: holds a JSON {type(value).__name__}, not {expected}")
    return value


def remove_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the orphan temporary files that a kill during ``atomic_write`` left in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    orphans = [p for p in folder.iterdir() if p.name.startswith(".") and TEMPORARY_MARK in p.name and p.is_file()]
    for orphan in orphans:
        with contextlib.suppress(OSError):
            orphan.unlink()
    return orphans
