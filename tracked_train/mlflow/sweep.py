"""A sweep in MLflow: one parent run, every trial a child run (``mlflow.parentRunId``).

The parent holds the space (params ``space.<key>``), the best value so far
(metric ``best/val_loss``, one point per finished trial: a curve of the search),
the best trial's params (tags ``best.<key>``), a table of all trials (the run's
note, which the MLflow UI shows on its page, and ``trials.csv``) and a plot
(``trials.png``).

The trials log through their own MLflow tracker (spooled, like any run); the
parent is written directly, and each update is a whole snapshot of the study.
So a failed update costs nothing but a warning: the next trial's update
carries everything, and several workers updating one parent never conflict.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ..errors import UserError, describe
from ..redact import strip_userinfo
from .client import ExperimentDeleted, check_reachable, connect, experiment_id, tracking_uri

log = logging.getLogger("tracked_train")

SWEEP_TAG = "tracked_train.sweep"  # the study's name, on the parent and on every trial
ROLE_TAG = "tracked_train.sweep_role"  # "parent" or "trial"
TRIAL_TAG = "tracked_train.trial"  # the trial's number
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: the UI nests the trials under the parent
NOTE_TAG = "mlflow.note.content"
VALUE_MAX = 6000  # MLflow's limit on a param value (and our cut for tags)


def check(uri: str | None) -> str:
    """The tracking URI to use, refused now (exit 2) if the scheme is wrong or the server does not answer."""
    uri = tracking_uri(uri)
    try:
        check_reachable(uri)
    except ConnectionError as e:
        raise UserError(f"MLflow tracking server {strip_userinfo(uri)} is not reachable ({e}); start it, fix "
                        "tracking.mlflow.uri / MLFLOW_TRACKING_URI, or sweep without --tracker mlflow") from None
    return uri


def child_tags(parent_id: str | None, study: str, number: int) -> dict[str, str]:
    """Tags that make a trial's run a child of the sweep's parent (any tracker records them)."""
    tags = {SWEEP_TAG: study, ROLE_TAG: "trial", TRIAL_TAG: str(number)}
    if parent_id:
        tags[PARENT_TAG] = parent_id
    return tags


def start_parent(uri: str, experiment: str, study: str, space: dict[str, str], tags: dict[str, str]) -> str:
    """Create the parent run (RUNNING); returns its id. Failure is bad input: nothing is left behind."""
    from mlflow.entities import Param

    client, run_id = _connect_new_store(uri), None
    try:
        try:
            exp_id = experiment_id(client, experiment)
        except ExperimentDeleted as e:
            raise UserError(f"MLflow experiment '{experiment}' is deleted at {strip_userinfo(uri)}; restore it "
                            f"(`mlflow experiments restore --experiment-id {e.experiment_id}`) or set "
                            "tracking.experiment") from None
        run = client.create_run(exp_id, run_name=study, tags={
            **tags, SWEEP_TAG: study, ROLE_TAG: "parent", "mlflow.source.name": "tracked-train sweep"})
        run_id = run.info.run_id
        client.log_batch(run_id, params=[Param(f"space.{k}", v[:VALUE_MAX]) for k, v in space.items()])
        return run_id
    except UserError:
        _delete(client, run_id)
        raise
    except Exception as e:  # noqa: BLE001 - the server refused or went away: nothing half-made stays
        _delete(client, run_id)
        raise UserError(f"MLflow at {strip_userinfo(uri)} could not create the sweep's parent run "
                        f"({describe(e, 200)}); check the server and try again") from None


def _connect_new_store(uri: str, tries: int = 4) -> Any:
    """A client; workers started together race to create and migrate a new embedded store (sqlite), and
    the loser's migration fails: its next try finds the store made."""
    import tenacity

    # Any error is retried: the race above, or a real failure that the last try reports. A random pause keeps
    # the racers apart.
    retrying = tenacity.Retrying(stop=tenacity.stop_after_attempt(tries), wait=tenacity.wait_random(0.2, 1.2),
                                 retry=tenacity.retry_if_exception_type(Exception), reraise=True)
    try:
        return retrying(connect, uri)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"cannot open the MLflow store at {strip_userinfo(uri)} ({describe(e, 200)}); "
                        "check tracking.mlflow.uri / MLFLOW_TRACKING_URI") from None


def _delete(client: Any, run_id: str | None) -> None:
    if run_id is None:
        return
    try:
        client.delete_run(run_id)
    except Exception as e:  # noqa: BLE001
        log.warning("mlflow: could not remove the half-made parent run %s (%s)", run_id, describe(e))


def reopen_parent(uri: str, run_id: str) -> bool:
    """A continued study: its parent is RUNNING again. False (with a warning) when it is gone."""
    try:
        client = connect(uri)
        info = client.get_run(run_id).info
        if info.lifecycle_stage == "deleted":
            log.warning("mlflow: the sweep's parent run %s is deleted; trials are logged without a parent", run_id)
            return False
        if info.status != "RUNNING":
            client.update_run(run_id, status="RUNNING")
        return True
    except Exception as e:  # noqa: BLE001 - the trials still log; the parent catches up at the next update
        log.warning("mlflow: could not reopen the sweep's parent run %s (%s)", run_id, describe(e))
        return True


def update_parent(uri: str, run_id: str, summary: dict[str, Any], csv_text: str, note: str, figure: Any) -> None:
    """Write the study's current state to the parent: best value and params, counts, table, plot."""
    from mlflow.entities import Metric, RunTag

    try:
        client = connect(uri)
        now = int(time.time() * 1000)
        step = summary["finished"]
        metrics = [Metric(f"trials/{k}", float(summary[k]), now, step) for k in ("complete", "pruned", "failed")]
        tags = [RunTag(NOTE_TAG, note[:60000])]
        if summary.get("best") is not None:
            best = summary["best"]
            col = summary.get("metric", "val/loss").replace("/", "_")  # best/val_loss, best/val_accuracy...
            metrics.append(Metric(f"best/{col}", float(best["value"]), now, step))
            tags += [RunTag("best_trial", str(best["number"])), RunTag("best_run", best.get("run") or ""),
                     RunTag(f"best_{col}", f"{best['value']:.6g}")]
            tags += [RunTag(f"best.{k}", str(v)[:VALUE_MAX]) for k, v in best["params"].items()]
            if best.get("mlflow_run_id"):
                tags.append(RunTag("best_run_id", best["mlflow_run_id"]))
        client.log_batch(run_id, metrics=metrics, tags=tags)
        client.log_text(run_id, csv_text, "trials.csv")
        if figure is not None:
            client.log_figure(run_id, figure, "trials.png")
    except Exception as e:  # noqa: BLE001 - see the module docstring: the next update carries it all
        log.warning("mlflow: could not update the sweep's parent run %s (%s)", run_id, describe(e))


def end_parent(uri: str, run_id: str, status: str) -> None:
    try:
        connect(uri).set_terminated(run_id, status)
    except Exception as e:  # noqa: BLE001
        log.warning("mlflow: could not end the sweep's parent run %s (%s)", run_id, describe(e))


def fail_child(uri: str, run_id: str, detail: str) -> None:
    """A trial whose worker died (no heartbeat): its run ends FAILED instead of staying RUNNING."""
    try:
        client = connect(uri)
        if client.get_run(run_id).info.status != "RUNNING":
            return
        client.set_tag(run_id, "stop_reason", "failed")
        client.set_tag(run_id, "stop_detail", detail)
        client.set_tag(run_id, NOTE_TAG, detail)
        client.set_terminated(run_id, "FAILED")
    except Exception as e:  # noqa: BLE001 - `tracked-train resume` of its folder also repairs it
        log.warning("mlflow: could not mark trial run %s failed (%s)", run_id, describe(e))


def find_trial_run(uri: str, parent_id: str, number: int) -> str | None:
    """The RUNNING child run of trial ``number`` under the sweep's parent, found by its tags: the run of a trial
    whose worker died on another machine (its id was in that machine's run folder only)."""
    try:
        client = connect(uri)
        exp = client.get_run(parent_id).info.experiment_id
        runs = client.search_runs([exp], filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}' and "
                                                       f"tags.`{TRIAL_TAG}` = '{int(number)}'")
    except Exception as e:  # noqa: BLE001 - the run stays RUNNING; the study itself is right
        log.warning("mlflow: could not look up trial %d's run (%s)", number, describe(e))
        return None
    running = [r.info.run_id for r in runs if r.info.status == "RUNNING"]
    return running[0] if running else None


def find_sweep(client: Any, study: str) -> tuple[Any | None, list[Any]]:
    """(parent run or None, trial runs ordered by trial number) of sweep ``study`` across active experiments."""
    from .store import _all

    if "'" in study:
        return None, []
    exps = [e.experiment_id for e in _all(client.search_experiments)]
    if not exps:
        return None, []
    found = _all(lambda **kw: client.search_runs(exps, filter_string=f"tags.`{SWEEP_TAG}` = '{study}'", **kw))
    parents = [r for r in found if r.data.tags.get(ROLE_TAG) == "parent"]
    trials = [r for r in found if r.data.tags.get(ROLE_TAG) == "trial"]
    trials.sort(key=lambda r: int(r.data.tags.get(TRIAL_TAG, "0") or 0))
    return (parents[0] if parents else None), trials
