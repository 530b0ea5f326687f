"""Atomic writes and checked reads.

Every output is written to a temporary name in its final directory and renamed into place, so a
job killed mid-write never leaves a file that a later run could mistake for complete.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` if the block succeeds."""
    path = Path(path)
    tmp = temp_beside(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        if _disk_full(err, tmp):
            raise OSError(errno.ENOSPC, f"No space left on device ({err})", str(path)) from err
        raise
    finally:
        tmp.unlink(missing_ok=True)


def temp_beside(path: str | os.PathLike) -> Path:
    """A new empty hidden file ``.<name>.<random>.tmp`` in ``path``'s directory (created).

    Its mode is what ``open()`` would give ``path`` (0666 less the umask), not mkstemp's 0600:
    renamed into place, it must be as readable as any other output (shared results directories).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _file_mode())
    finally:
        os.close(fd)
    return Path(tmp)


@functools.cache
def _file_mode() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


#: below this many free bytes a failed write counts as "disk full"
FULL_BELOW = 1 << 20


def _disk_full(err: BaseException, path: Path) -> bool:
    """Whether a failed write to ``path`` ran out of disk space or quota.

    Writers report it differently: ``OSError(ENOSPC)`` from Python's files and pandas, an
    ``OSError`` without errno ("N requested and M written") from numpy, a ``RuntimeError`` from
    torch's zip writer. The file system's free space, read while the temporary file still holds
    what was written, tells the last two apart from other errors.
    """
    if getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        return True
    if isinstance(err, OSError) and err.errno is not None:
        return False
    try:
        stat = os.statvfs(path.parent)
    except OSError:
        return False
    return stat.f_bavail * stat.f_frsize < FULL_BELOW


def open_memmap(path: str | os.PathLike, dtype, shape: tuple[int, ...]) -> np.ndarray:
    """A new ``.npy`` file memory-mapped for writing, its disk space reserved up front.

    Pages of a sparse memory map are allocated when first written: on a full disk that kills the
    process with SIGBUS (no message, no clean-up). Reserving the blocks first turns it into an
    ``OSError(ENOSPC)`` here, before any work is done.
    """
    array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    if hasattr(os, "posix_fallocate"):
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
        except OSError as err:
            if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # no fallocate: stay sparse
                del array
                raise OSError(err.errno, os.strerror(err.errno), str(path)) from None
        finally:
            os.close(fd)
    return array


def write_json(path: str | os.PathLike, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: file not found. Rerun the step that writes it.") from None
    except json.JSONDecodeError as err:
        raise DataError(
            f"{path}: not valid JSON ({err.msg} at line {err.lineno}); the file is corrupt or "
            "was cut short. Delete it and rerun the step that writes it."
        ) from None


def write_csv(path: str | os.PathLike, frame) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, lineterminator="\n")


def read_csv(path: str | os.PathLike, required: tuple[str, ...] = ()):
    import pandas as pd

    path = Path(path)
    try:
        frame = pd.read_csv(path)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found. Rerun the step that writes it.") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: unreadable CSV ({err}). Delete it and rerun its step.") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(frame.columns)}. "
            "The file was written by another version or edited; delete it and rerun its step."
        )
    return frame


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array, allow_pickle=False)


def read_npy(path: str | os.PathLike, mmap: bool = True) -> np.ndarray:
    """Load an array (memory-mapped by default); a truncated or corrupt file is a DataError."""
    path = Path(path)
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found. Rerun the step that writes it.") from None
    except (ValueError, OSError, EOFError) as err:
        raise DataError(
            f"{path}: not a readable .npy array ({err}); the file is truncated or corrupt. "
            "Delete it and rerun the step that writes it."
        ) from None


def write_torch(path: str | os.PathLike, obj: Any) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def read_torch(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """Load a checkpoint with ``weights_only=True``: tensors and plain containers only, no code."""
    import pickle

    import torch

    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found. Rerun the step that writes it.") from None
    except pickle.UnpicklingError as err:
        raise DataError(
            f"{path}: refused to load: the checkpoint holds objects other than tensors and plain "
            f"containers ({str(err).splitlines()[0][:200]}). segmia only loads weights "
            "(torch.load(weights_only=True)); a checkpoint from elsewhere may run arbitrary code. "
            "Delete it and rerun the step that writes it."
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        raise DataError(
            f"{path}: unreadable checkpoint ({str(err).splitlines()[0][:200]}); the file is "
            "truncated or corrupt. Delete it and rerun the step that writes it."
        ) from None
