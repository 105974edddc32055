"""MLflow's own system metrics monitor beside a tracked run (``tracking.mlflow.system_metrics: true``).

MLflow's ``SystemMetricsMonitor`` samples CPU, memory, disk, network and (with
``nvidia-ml-py``) GPU every ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` seconds
(MLflow's variable, 10 by default) and logs them to the run as ``system/*``,
where the UI's "System metrics" tab shows them. They go to the server
directly, not through the spool: they describe the machine, not the training,
so they are not in ``metrics.jsonl``, and what is sampled while the server is
unreachable is not kept (the monitor stops at its first failed request).
"""

from __future__ import annotations

import logging
from typing import Any

from ..errors import describe

log = logging.getLogger("tracked_train")


def start(uri: str, run_id: str | None, resuming: bool) -> Any | None:
    """A started monitor for ``run_id``, or None (with a warning) when there is no run yet or MLflow cannot
    monitor this machine."""
    if run_id is None:  # created later, when the spool's create event reaches the server
        log.warning("mlflow: no system metrics in this attempt: its MLflow run does not exist yet")
        return None
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        # resume_logging: a resumed run's system/* steps continue after the ones the server holds.
        monitor = SystemMetricsMonitor(run_id, resume_logging=resuming, tracking_uri=uri)
    except Exception as e:  # noqa: BLE001 - psutil missing, an unreadable /proc: the run trains on
        log.warning("mlflow: system metrics are off (%s)", describe(e))
        return None
    monitor.start()
    return monitor


def stop(monitor: Any | None) -> None:
    """Stop sampling and send what was sampled; before the run ends, while it is still RUNNING."""
    if monitor is not None:
        monitor.finish()
