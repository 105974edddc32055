"""The files an MLflow spool's events upload, as snapshots in ``<run>/mlflow/uploads/``.

A file is copied when its event is appended, not when the event is sent: by then the original may have
changed (a checkpoint saved again) or be gone. The sink removes a snapshot once the server has it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from ..trackers.snapshot import remove, snapshot
from ..trackers.spool import Spool
from .events import Artifact, readable
from .sync import FOLDER


class Uploads:
    """Snapshots for one spool's upload events, named in the order they are taken.

    While the server is away a long run would keep one snapshot per checkpoint it saves: an artifact path keeps
    only its newest snapshot not yet sent, an older one goes to ``discard`` (the sender removes it between two
    batches, so never while it is being sent).
    """

    def __init__(self, spool: Spool, run_dir: Path, discard: Callable[[Path], None]) -> None:
        self.spool, self.run_dir, self.discard = spool, run_dir, discard
        self._seq = 0
        self._newest: dict[str, Path] = {}  # artifact path -> its newest snapshot not yet known sent

    def snapshot(self, path: Path, model: bool = False) -> str:
        """Copy ``path`` (a file or a folder); returns the copy's path relative to the run folder, as events
        name it. ``model``: it is a checkpoint a Logged Model is made from."""
        self._seq += 1
        src = Path(FOLDER) / "uploads" / f"{self._seq:06d}-{time.time_ns()}{'-model' if model else ''}"
        snapshot(path, self.run_dir / src)
        return str(src)

    def artifact(self, path: Path, artifact_path: str) -> None:
        """Append the upload of ``path`` as the run's artifact ``artifact_path``."""
        src = self.snapshot(path)
        self.spool.append(Artifact(src, artifact_path))
        old = self._newest.get(artifact_path)
        if old is not None:
            self.discard(self.run_dir / old)
        self._newest[artifact_path] = Path(src)

    def adopt_pending(self) -> None:
        """Of the uploads an earlier process left pending, keep only the newest snapshot per artifact path."""
        for e in readable(e for _, e in self.spool.pending(limit=None)):
            if isinstance(e, Artifact):
                old = self._newest.get(e.dst)
                if old is not None:
                    remove(self.run_dir / old)
                self._newest[e.dst] = Path(e.src)
