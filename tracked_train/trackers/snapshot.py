"""Point-in-time copies of run files for background uploads.

Checkpoint folders are replaced atomically by new ones; an uploader working
from the live folder could send half of one checkpoint and half of the next.
A snapshot hard-links the files (free, and immune to the swap) into a private
folder the uploader owns and removes when done.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def snapshot(src: Path, dest: Path) -> None:
    """Hard-link ``src`` (file or folder) to ``dest``: free, and immune to the next atomic swap."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dest, copy_function=_link_or_copy)
    else:
        _link_or_copy(src, dest)


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _link_or_copy(src: str | Path, dest: str | Path) -> None:
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)
