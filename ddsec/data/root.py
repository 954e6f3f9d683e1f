"""Where dataset files live on disk.

ddsec never fetches data unless asked (``download=True``); it reads the files from a local data
root, chosen by :func:`data_root`.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DATA_ENV", "data_root"]

DATA_ENV = "DDSEC_DATA"
"""Environment variable naming the data root."""


def data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """Resolve the data root.

    Precedence: the explicit ``root`` argument, then the ``DDSEC_DATA`` environment variable,
    then ``$XDG_CACHE_HOME/ddsec/data``, then ``~/.cache/ddsec/data``. The folder is not
    created and need not exist.

    Args:
        root: An explicit folder, or ``None``.

    Returns:
        The folder, with ``~`` expanded.
    """
    if root is not None and str(root) != "":
        return Path(root).expanduser()
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME")
    base = Path(cache).expanduser() if cache else Path.home() / ".cache"
    return base / "ddsec" / "data"
