"""Run folder names: a name from the command line is checked, a name from a server is sanitised.

A run's name becomes a folder under ``--output-dir``. A name is safe when it is
one plain path component: no separators, not ``.`` or ``..``, no control
characters, at most :data:`MAX_LEN` characters (file systems cap a component
at 255 bytes; run names also appear in W&B and MLflow, which cap them lower).
"""

from __future__ import annotations

import re

MAX_LEN = 100
_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\]")


def problem(name: str) -> str | None:
    """Why ``name`` cannot name a run folder, or None."""
    if not name.strip():
        return "is empty"
    if _UNSAFE.search(name):
        return "contains a path separator or a control character"
    if name.strip(".") == "":
        return "is only dots"
    if name.startswith("-"):
        return "starts with '-' (it would read as an option)"
    if len(name) > MAX_LEN:
        return f"is {len(name)} characters long (at most {MAX_LEN})"
    return None


def sanitise(name: str, fallback: str = "run") -> str:
    """A safe folder name made from an untrusted ``name`` (e.g. a run name stored on a server)."""
    clean = _UNSAFE.sub("-", name).strip().lstrip(".-")  # no hidden folder, nothing that reads as an option
    if clean.strip(".") == "":
        clean = ""
    return clean[:MAX_LEN].rstrip() or fallback
