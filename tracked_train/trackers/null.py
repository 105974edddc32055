"""A tracker that records nothing: the baseline for overhead benchmarks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import Outcome, RunInfo, Tracker


class NullTracker(Tracker):
    name = "null"

    def start(self, run: RunInfo) -> None:
        pass

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_artifact(self, local_path: Path, artifact_path: str, metadata: dict[str, Any] | None = None) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass

    def finish(self, outcome: Outcome) -> None:
        pass
