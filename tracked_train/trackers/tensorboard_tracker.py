"""TensorBoard backend: event files in ``<run>/tensorboard/``, for ``tensorboard --logdir runs``.

Scalars go in at their training step under metrics.jsonl's names (``train/loss``,
``val/loss``, ...); the config goes to the hparams plugin, so the HPARAMS tab
lines runs up by any key next to their final metrics (the last value of each
scalar, plus the ``best/*`` values at the end); the end-of-run tags
(``stop_reason``, ``stop_detail``, ...) are text. TensorBoard's own writer
thread writes the files: a call costs the training thread a few small protobufs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..errors import UserError
from .base import Outcome, RunInfo, Tracker

FOLDER = "tensorboard"
EVENT_FILES = "events.out.tfevents.*"


def _summary_writer() -> type:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("the tensorboard tracker needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter


def _session_start(params: dict[str, Any]) -> Any:
    """The config as the hparams plugin's session start: one HPARAMS column per key.

    Built here rather than with ``SummaryWriter.add_hparams``, which writes to a
    timestamped subfolder (a second run in TensorBoard's list) and turns bools
    into 1.0. No experiment summary is written: TensorBoard then takes the
    columns from every run's keys and scalars, so runs side by side all show.
    """
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams import metadata
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData, SessionStartInfo

    info = SessionStartInfo(start_time_secs=time.time())
    for key, value in params.items():
        if value is None:
            continue  # hparams have no null: an unset key is an empty cell
        if isinstance(value, bool):
            info.hparams[key].bool_value = value
        elif isinstance(value, (int, float)):
            info.hparams[key].number_value = value
        else:
            info.hparams[key].string_value = str(value)  # lists as MLflow shows them: "['jsonl', 'mlflow']"
    meta = metadata.create_summary_metadata(HParamsPluginData(session_start_info=info))
    return Summary(value=[Summary.Value(tag=metadata.SESSION_START_INFO_TAG, metadata=meta)])


class TensorboardTracker(Tracker):
    name = "tensorboard"

    def __init__(self) -> None:
        self._writer: Any = None
        self._folder = Path()
        self._earlier: set[Path] = set()  # event files of earlier segments of this run
        self._last_step = 0

    def start(self, run: RunInfo) -> None:
        summary_writer = _summary_writer()
        self._folder = run.run_dir / FOLDER
        self._earlier = set(self._folder.glob(EVENT_FILES))
        self._last_step = run.start_step
        # A resumed run logs every step after its checkpoint again (the same values, or others after a
        # rewind), in a new event file: its purge marker makes TensorBoard drop the earlier segments'
        # steps from start_step + 1 on, so no step is shown twice.
        purge = run.start_step + 1 if self._earlier else None
        # max_queue: the writer thread checksums in pure Python; a short queue would make add_scalar wait for it.
        self._writer = summary_writer(str(self._folder), purge_step=purge, max_queue=1000, flush_secs=10)
        # TensorBoard reads a tag's metadata (where the hparams live) from its first event only, so a later
        # segment's would be ignored: the folder's first segment writes them, whether it is a new run or not.
        if not self._earlier:
            self._writer.file_writer.add_summary(_session_start(dict(run.params)), run.start_step)

    def log_params(self, params: dict[str, Any]) -> None:
        pass  # the same config went in at start (a rewind's new values could not replace it)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            # A float32, as TensorBoard keeps scalars: its data server drops float64 ones (double_precision).
            self._writer.add_scalar(key, value, step)
        self._last_step = step

    def log_artifact(self, local_path: Path, artifact_path: str, metadata: dict[str, Any] | None = None) -> None:
        # Files stay in the run folder; a checkpoint is a durability point: the steps it covers are on disk.
        self._writer.flush()

    def set_tags(self, tags: dict[str, str]) -> None:
        self._text(tags, self._last_step)

    def finish(self, outcome: Outcome) -> None:
        if self._writer is None:
            return
        # The hparams table's columns to sort runs by. At the stop step, not the best step: a resumed
        # segment's would sit beside the first's there (only steps after the checkpoint are dropped).
        step = outcome.stop.step
        for key, value in outcome.best_metrics().items():
            self._writer.add_scalar(key, value, step)
        self._text(outcome.tags(), step)
        self._writer.close()
        self._writer = None

    def abort(self) -> None:
        """Never trained: remove this attempt's event file, whose purge marker would hide earlier steps."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            for path in set(self._folder.glob(EVENT_FILES)) - self._earlier:
                path.unlink(missing_ok=True)

    def _text(self, tags: dict[str, str], step: int) -> None:
        for key, value in tags.items():
            if value != "":
                self._writer.add_text(key, value, step)
