"""Hugging Face trackio backend: local-first (a SQLite database under ``TRACKIO_DIR``), or a Space or a
self-hosted trackio server when ``TRACKIO_SPACE_ID`` / ``TRACKIO_SERVER_URL`` say so (trackio reads them).

The project is ``tracking.experiment`` and the run is named after ours, its config the redacted one. Each
step is one trackio row (its train and val metrics merged, as metrics.jsonl's are), handed to trackio's own
sender thread, which writes in batches: the training thread only queues. The stop reason, status and best
values are an alert at the stop step (trackio has no run status or tags; alerts are its run events, shown
in the dashboard and read by ``trackio.Api().alerts``). A resumed run continues the same trackio run: the
steps trackio lost to a kill -9 (its sender batches) are logged again from metrics.jsonl, in step order, and
the steps it holds are not logged twice. An inexact resume (``--from best``, a changed config) recomputes
steps trackio already holds with other values, and trackio cannot drop them: it starts a new trackio run of
the same name holding metrics.jsonl's steps up to the resume step.

trackio's own calls never raise into the run (it turns its failures into warnings); a failure of ours is
reported once by the fan-out and training goes on.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from pathlib import Path
from typing import Any

from ..errors import UserError, describe
from ..redact import redact, redact_text
from . import jsonl
from .base import Outcome, RunInfo, Tracker

log = logging.getLogger("tracked_train")

_LEVEL = {"FINISHED": "INFO", "KILLED": "WARN", "FAILED": "ERROR"}


def _trackio():  # noqa: ANN202 - the module, imported only when a run asks for trackio
    try:
        import trackio
    except ImportError:
        raise UserError("the trackio tracker needs the trackio package: pip install 'tracked-train[trackio]' "
                        "(or pip install trackio)") from None
    return trackio


def _remote() -> bool:
    """Logging to a Space or a trackio server: what trackio holds is not in a local database to ask."""
    return bool(os.environ.get("TRACKIO_SPACE_ID") or os.environ.get("TRACKIO_SERVER_URL"))


@contextlib.contextmanager
def _quiet():
    """trackio prints banners ("* Trackio project initialized", "* Run finished...") and each alert to stdout,
    which is the user's: into train.log instead (debug), credentials in a server URL removed. Our own lines
    say where the run is and how it ended."""
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            yield
    finally:
        for line in out.getvalue().splitlines():
            if line.strip():
                log.debug("trackio: %s", redact_text(line.lstrip("* ").strip()))


class TrackioTracker(Tracker):
    name = "trackio"

    def __init__(self) -> None:
        self._run: Any = None
        self._project = ""
        self._skip_through = 0  # steps trackio holds already (a resumed run): logging them again is dropped
        self._row: dict[str, Any] = {}  # the current step's metrics, sent when the next step begins
        self._last_step = 0

    def start(self, run: RunInfo) -> None:
        trackio = _trackio()
        prev = run.resume_state or {}
        self._project = prev.get("project") or run.experiment
        params = redact(dict(run.params))
        # trackio reserves keys starting with "_" for its own columns.
        config = {(f"param{k}" if k.startswith("_") else k): v for k, v in params.items()}
        try:
            with _quiet():
                self._run, held = self._open(trackio, run, prev, config)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - a bad project name, an unreachable Space: bad input, exit 2
            raise UserError(f"trackio could not start the run ({describe(e, 200)}); check tracking.experiment "
                            "(the trackio project) and TRACKIO_SPACE_ID / TRACKIO_SERVER_URL") from None
        replay = jsonl.rows_between(run.run_dir / jsonl.FILENAME, held, run.start_step)
        if replay:
            log.info("trackio: %d steps (%d-%d) not in trackio's run are logged from %s", len(replay),
                     replay[0]["step"], replay[-1]["step"], jsonl.FILENAME)
        for row in replay:  # in step order, before any new step
            step = row.pop("step")
            self._run.log(row, step=step)
        self._skip_through = self._last_step = max(held, run.start_step)
        where = "a Space or server" if _remote() else str(Path(trackio.TRACKIO_DIR))
        log.info("trackio: run %s (%s) in project %s, %s; `trackio show --project \"%s\"`", self._run.name,
                 self._run.id, self._project, where, self._project)

    def _open(self, trackio: Any, run: RunInfo, prev: dict, config: dict) -> tuple[Any, int]:
        """(the trackio run, the last step it holds). The run of the checkpoint's state where trackio still has
        it and the resume is exact; else a new one, which holds nothing yet."""
        # The name the run started with: a resumed folder may since have been moved or renamed.
        common = {"project": self._project, "name": prev.get("name") or run.name, "config": config, "embed": False,
                  "auto_log_cpu": False, "auto_log_gpu": False}
        run_id = prev.get("run_id")
        if run.continuing and run_id and not run.rewind:
            try:
                r = trackio.init(resume="must", **common)
            except ValueError:  # "Run ... does not exist in project ...": another TRACKIO_DIR, or deleted
                r = None
            if r is not None and r.id == run_id:
                if _remote():  # the server's last step is not ours to read: the checkpoint's record is
                    return r, int(prev.get("last_step") or 0)
                held = trackio.SQLiteStorage.get_max_step_for_run(self._project, run_id=run_id)
                return r, int(held or 0)
            log.warning("trackio: run %s (%s) is not in project %s here; continuing in a new trackio run",
                        common["name"], run_id, self._project)
        elif run.rewind and run_id:
            log.info("trackio: the steps after %d are recomputed with other values; a new trackio run holds "
                     "them (trackio cannot drop the ones run %s holds)", run.start_step, run_id)
        return trackio.init(resume="never", **common), 0

    def log_params(self, params: dict[str, Any]) -> None:
        pass  # in the config at start; trackio keeps a run's config as first logged

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self._run is None or step <= self._skip_through:
            return
        if step != self._last_step:
            self._send()
        self._row.update(metrics)
        self._last_step = step

    def log_artifact(self, local_path: Path, artifact_path: str, metadata: dict[str, Any] | None = None) -> None:
        # Files stay in the run folder (checkpoints are MLflow's and W&B's to upload). A checkpoint is a
        # durability point: the steps it covers go to trackio's sender now.
        self._send()

    def set_tags(self, tags: dict[str, str]) -> None:
        if self._run is not None and tags:
            self._send()
            with _quiet():
                self._run.alert("tags", "\n".join(f"{k}={v}" for k, v in tags.items()),
                                level=trackio_level("INFO"), step=self._last_step)

    def finish(self, outcome: Outcome) -> None:
        if self._run is None:
            return
        self._send()
        stop, status = outcome.stop, outcome.stop.reason.status
        lines = [stop.detail, f"status={status}", *(f"{k}={v}" for k, v in outcome.tags().items() if v != ""),
                 *(f"{k}={v:.6g}" for k, v in outcome.best_metrics().items())]
        with _quiet():
            self._run.alert(f"stopped: {stop.reason.value}", "\n".join(lines), level=trackio_level(_LEVEL[status]),
                            step=stop.step)
        self._close()

    def abort(self) -> None:
        """Never trained: nothing was logged, so trackio stored nothing of this attempt."""
        if self._run is not None:
            self._close()

    def _close(self) -> None:
        """trackio's finish waits for its sender to write everything. Through ``trackio.finish`` where our run is
        this thread's current one: trackio's exit hook would otherwise finish it again (and print again)."""
        with _quiet():
            try:
                _trackio().finish()
            except RuntimeError:  # ended on another thread than it started: not its current run there
                self._run.finish()
        self._run = None

    def state(self) -> dict[str, Any]:
        if self._run is None:
            return {}
        return {"project": self._project, "run_id": self._run.id, "name": self._run.name,
                "last_step": self._last_step}

    def _send(self) -> None:
        if self._row:
            self._run.log(self._row, step=self._last_step)
            self._row = {}


def trackio_level(name: str) -> Any:
    return _trackio().AlertLevel[name]
