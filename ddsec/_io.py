"""Atomic file writes shared by exports and checkpoints.

A writer never leaves a half-written file at its destination: data goes to a temporary file in
the destination's directory (so the final rename stays on one filesystem), is flushed to disk
with ``fsync`` and then moved into place with :func:`os.replace`, which is atomic on POSIX and
Windows. If the writer raises, the temporary file is removed and the destination is untouched.
Readers therefore see either the old file or the complete new one, even after a crash.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_write"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path that becomes ``path`` when the block ends without error.

    The parent directories of ``path`` are created. The temporary file is created empty (with
    the process's default permissions) in the same directory, named ``.<name>.<random>.tmp``;
    the block may write it by path (``open``, ``safetensors.torch.save_file``, ``PIL``...) and
    may replace it, but must not leave it missing. On success it is fsynced and moved onto
    ``path``; on any exception it is deleted and the exception propagates.

    Args:
        path: Final destination. An existing file there is replaced.

    Yields:
        The temporary path to write.

    Example:
        >>> with atomic_path("out/ckpt.safetensors") as tmp:  # doctest: +SKIP
        ...     save_file(tensors, tmp)
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temp(dest)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(dest.parent)


def atomic_write(path: str | os.PathLike[str], write_fn: Callable[[Path], object]) -> Path:
    """Atomically write ``path`` by calling ``write_fn(tmp_path)``.

    Function form of :func:`atomic_path`.

    Args:
        path: Final destination; parent directories are created.
        write_fn: Called once with the temporary path to write; its return value is ignored.

    Returns:
        The destination path.
    """
    with atomic_path(path) as tmp:
        write_fn(tmp)
    return Path(path)


def _create_temp(dest: Path) -> Path:
    """Create an empty, uniquely named temporary file next to ``dest``."""
    while True:
        tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(6)}.tmp")
        try:
            with open(tmp, "xb"):
                return tmp
        except FileExistsError:
            continue


def _fsync_file(path: Path) -> None:
    """Flush a written file's data to disk."""
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(directory: Path) -> None:
    """Best-effort fsync of a directory so the rename itself is durable (POSIX only)."""
    if os.name != "posix":
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
