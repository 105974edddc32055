"""Sweeps across machines for real: a PostgreSQL the test starts (initdb + pg_ctl on a free port, password
logins only), an `mlflow server` whose backend store is that PostgreSQL, `tracked-train sweep` workers as
separate processes.

One sweep runs through the module. Workers A and B each have their own working and output folder, as on two
machines (A finds its password in PGPASSWORD, B in a password file, as ~/.pgpass), and share a 6-trial study in
PostgreSQL; their runs go to the MLflow server. A is caught in the middle of a trial and killed with SIGKILL,
its folder taken away (its machine is lost); then, while B trains, the database is stopped, and started again
once B says it is waiting for it. B fails A's trial, runs its params again and finishes the study.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SWEEP_SPACE, SWEEP_TINY, cli, finished_trials, free_port, records, wait_until

from tracked_train.testing import MlflowServer, Postgres, postgres_bindir

ROOT = Path(__file__).resolve().parents[1]
USER, PASSWORD = "sweeper", "pg-canary-5521"  # the password must show up in no output
STUDY, TRIALS = "pgs", 6


def _why_not() -> str | None:
    if postgres_bindir() is None:
        return ("PostgreSQL's server programs (initdb, pg_ctl) are not installed: apt-get install postgresql "
                "(.ci/run does)")
    if os.geteuid() == 0:
        import pwd

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "run as root, PostgreSQL needs a 'postgres' user to run as (apt-get install postgresql makes it)"
    return None


pytestmark = [pytest.mark.slow, pytest.mark.skipif(_why_not() is not None, reason=_why_not() or "")]


@pytest.fixture(scope="module")
def pg():
    server = Postgres().init()
    try:
        server.start()
        server.add_user(USER, PASSWORD, "optuna", "mlflow")
        yield server
    finally:
        server.stop(remove=True)


@pytest.fixture(scope="module")
def pg_mlflow(pg, tmp_path_factory):
    """`mlflow server --backend-store-uri postgresql://sweeper@127.0.0.1:PORT/mlflow`, the password in PGPASSWORD."""
    server = MlflowServer(tmp_path_factory.mktemp("pg-mlflow"), pg.url(USER, "mlflow"), {"PGPASSWORD": PASSWORD})
    try:
        server.start()
        yield server
    finally:
        server.stop()


def sweep_args(pg, server, folder: Path, storage: str | None = None, *extra: str) -> list[str]:
    args = ["sweep", "--space", str(folder / "space.yaml"), "--storage", storage or pg.url(USER, "optuna"),
            "--study", STUDY, "--trials", str(TRIALS), "--seed", "3", "--pruner-warmup-trials", "2",
            "--heartbeat", "2", "--tracker", "mlflow", "--set", f"tracking.mlflow.uri={server.uri}",
            "--output-dir", str(folder / "runs"), *extra]
    for s in SWEEP_TINY:
        args += ["--set", s]
    return args


def machine(tmp: Path, name: str, pg, server, env: dict[str, str]) -> subprocess.Popen:
    """A worker in its own folder (its machine); its console output in tmp/NAME.out and .err."""
    folder = tmp / name
    folder.mkdir()
    (folder / "space.yaml").write_text(SWEEP_SPACE)
    return subprocess.Popen([sys.executable, "-m", "tracked_train", *sweep_args(pg, server, folder)], cwd=folder,
                            stdout=open(tmp / f"{name}.out", "w"), stderr=open(tmp / f"{name}.err", "w"),
                            env={**{k: v for k, v in os.environ.items() if not k.startswith("PG")},
                                 "OMP_NUM_THREADS": "1", **env})


def latest_trial(tmp: Path, name: str) -> int | None:
    """The number of the last trial the worker started (from its console lines), or None."""
    started = re.findall(rf"sweep {STUDY}: trial (\d+) \(", _read(tmp / f"{name}.err"))
    return int(started[-1]) if started else None


def mid_trial(tmp: Path, name: str) -> bool:
    """The worker's latest trial has trained a step and not ended."""
    number = latest_trial(tmp, name)
    if number is None:
        return False
    lines = _read(tmp / name / "runs" / f"{STUDY}-t{number:03d}" / "metrics.jsonl").splitlines()
    rows = []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except ValueError:  # the line being written
            pass
    return any("train/loss" in r for r in rows) and not any(r.get("event") == "stop" for r in rows)


def freeze_mid_trial(proc: subprocess.Popen, tmp: Path, name: str) -> None:
    """SIGSTOP the worker while :func:`mid_trial` holds for it (checked again once it is stopped)."""
    while True:
        wait_until(lambda: mid_trial(tmp, name), f"{name} to train a trial", 300, proc)
        proc.send_signal(signal.SIGSTOP)
        wait_until(lambda: _state(proc.pid) == "T", f"{name} to stop", 60, proc)
        if mid_trial(tmp, name):
            return
        proc.send_signal(signal.SIGCONT)  # it ended the trial between the look and the signal: catch the next


def _state(pid: int) -> str:
    """The process's state letter from /proc (T: stopped by a signal)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def load_study(pg):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=STUDY, storage=pg.url(USER, "optuna").replace(
        f"{USER}@", f"{USER}:{PASSWORD}@"))


def moved(run_dir: str, tmp: Path) -> Path:
    """A trial's folder now: machine A's went to a-lost with it."""
    return Path(run_dir.replace(str(tmp / "a"), str(tmp / "a-lost"), 1))


@pytest.fixture(scope="module")
def pg_sweep(pg, pg_mlflow, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pg-sweep")
    pgpass = tmp / "pgpass"  # libpq's password file (~/.pgpass unless PGPASSFILE names another)
    pgpass.write_text(f"127.0.0.1:{pg.port}:optuna:{USER}:{PASSWORD}\n")
    pgpass.chmod(0o600)
    a = machine(tmp, "a", pg, pg_mlflow, {"PGPASSWORD": PASSWORD})
    b = machine(tmp, "b", pg, pg_mlflow, {"PGPASSFILE": str(pgpass)})
    try:
        # A is caught in the middle of a trial and frozen there (a tiny trial trains in well under a second, so
        # waiting for both workers to be mid-trial at once is a race a fast machine loses); once B has started a
        # trial, A is killed and its machine is gone with its folder. (Killed before the outage, not after:
        # after it, A could find the study finished by B and exit first.)
        freeze_mid_trial(a, tmp, "a")
        wait_until(lambda: latest_trial(tmp, "b") is not None, "B to start a trial", 300, b)
        a.send_signal(signal.SIGKILL)
        assert a.wait() == -signal.SIGKILL
        killed = latest_trial(tmp, "a")
        (tmp / "a").rename(tmp / "a-lost")
        # Then the database goes away while B trains, and comes back once B says it waits for it.
        assert b.poll() is None, _read(tmp / "b.err")[-3000:]
        before = pg.pid()
        pg.stop()
        wait_until(lambda: "the study's database is unreachable" in _read(tmp / "b.err"),
                   "B to wait for the database", 60, b)
        pg.start()
        restart = {"before": before, "after": pg.pid()}
        assert b.wait(timeout=400) == 0, _read(tmp / "b.err")[-3000:]
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.kill()
                p.wait()
    return tmp, killed, restart


def test_two_machines_share_one_study_in_postgresql(pg, pg_sweep):
    from optuna.trial import TrialState

    tmp, killed, _ = pg_sweep
    trials = load_study(pg).get_trials()
    done = finished_trials(trials)
    assert len(done) == TRIALS, [(t.number, t.state) for t in trials]
    # Besides the killed trial only a worker asking for a 7th trial with the 6th may leave a failed one, so marked.
    assert all(t.user_attrs.get("stop_reason") == "surplus" for t in trials if t not in done and t.number != killed)
    assert trials[killed].state == TrialState.FAIL
    # Both machines ran trials, each in its own output folder.
    where = {Path(t.user_attrs["run_dir"]).parent for t in [*done, trials[killed]]}
    assert where == {tmp / "a" / "runs", tmp / "b" / "runs"}, where
    out = _read(tmp / "b.out")
    assert f"{TRIALS} of {TRIALS} trials finished" in out
    assert f"sweep {STUDY} (postgresql://127.0.0.1:{pg.port}/optuna)" in out  # shown without the user
    for name in ("a", "b"):
        assert PASSWORD not in _read(tmp / f"{name}.out") + _read(tmp / f"{name}.err")


def test_one_parent_run_every_trial_a_child_on_the_postgresql_backed_server(pg, pg_mlflow, pg_sweep):
    tmp, killed, _ = pg_sweep
    trials = load_study(pg).get_trials()
    client = pg_mlflow.client()
    exp = client.get_experiment_by_name("sweeps")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`tracked_train.sweep` = '{STUDY}'")
    parents = [r for r in runs if r.data.tags["tracked_train.sweep_role"] == "parent"]
    assert len(parents) == 1
    parent = client.get_run(parents[0].info.run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["trials/complete"] + parent.data.metrics["trials/pruned"] == TRIALS
    assert parent.data.tags["sweep.storage"] == f"postgresql://127.0.0.1:{pg.port}/optuna"
    children = [r for r in runs if r.data.tags["tracked_train.sweep_role"] == "trial"]
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    ok = [c for c in children if c.info.status == "FINISHED"]
    assert sorted(int(c.data.tags["tracked_train.trial"]) for c in ok) == sorted(
        t.number for t in finished_trials(trials))
    # The killed trial's run (its id was on the lost machine only) is found by its tags and ended FAILED.
    rest = [c for c in children if c.info.status != "FINISHED"]
    assert [(c.data.tags["tracked_train.trial"], c.info.status) for c in rest] == [(str(killed), "FAILED")]
    assert "stopped (no heartbeat" in rest[0].data.tags["stop_detail"]
    shown = json.dumps([[r.data.params, r.data.tags] for r in runs])
    assert PASSWORD not in shown and f"{USER}@" not in shown


def test_killed_worker_trial_is_failed_and_rerun_on_the_other_machine(pg, pg_sweep):
    tmp, killed, _ = pg_sweep
    trials = load_study(pg).get_trials()
    retry = next(t for t in trials if t.user_attrs.get("retry_of") == killed)
    assert retry.params == trials[killed].params and retry in finished_trials(trials)
    log = _read(tmp / "b.err")
    assert f"trial {killed}'s worker stopped (no heartbeat for 6 s)" in log
    # Its folder went with machine A: the params start afresh in B's own folder.
    folder = Path(retry.user_attrs["run_dir"])
    assert folder == tmp / "b" / "runs" / f"{STUDY}-t{retry.number:03d}"
    assert not any(r.get("event") == "resume" for r in records(folder))
    assert [r["step"] for r in records(folder) if "train/loss" in r][0] == 1


def test_database_restart_mid_sweep_loses_and_duplicates_nothing(pg, pg_mlflow, pg_sweep):
    from tracked_train.mlflow.sync import spool_run_id

    tmp, killed, restart = pg_sweep
    assert restart["before"] != restart["after"] and None not in restart.values()  # a new postmaster
    logs = {n: _read(tmp / f"{n}.err") for n in "ab"}
    waited = [n for n in logs if "the study's database is unreachable" in logs[n]]
    assert waited and all("the study's database answers again" in logs[n] for n in waited), logs
    assert not any("could not report" in t or "could not record trial" in t or "Traceback" in t for t in logs.values())
    trials = load_study(pg).get_trials()
    client = pg_mlflow.client()
    for t in finished_trials(trials):
        folder = moved(t.user_attrs["run_dir"], tmp)
        rows = records(folder)
        steps = [r["step"] for r in rows if "train/loss" in r]
        evals = [r["step"] for r in rows if "val/loss" in r]
        assert steps == list(range(1, steps[-1] + 1)), (t.number, steps)
        # Every evaluation reached the study once (none lost while the database was away).
        assert sorted(t.intermediate_values) == evals, (t.number, t.intermediate_values, evals)
        # ... and the MLflow run (behind the same database) holds each step once.
        run_id = spool_run_id(folder / "mlflow")
        assert run_id == t.user_attrs["mlflow_run_id"]
        assert sorted(m.step for m in client.get_metric_history(run_id, "train/loss")) == steps, t.number
        assert sorted(m.step for m in client.get_metric_history(run_id, "val/loss")) == evals, t.number
        assert client.get_run(run_id).data.tags["tracked_train.trial"] == str(t.number)


def test_wrong_password_or_unreachable_database_is_one_line_and_leaves_nothing(pg, pg_mlflow, tmp_path):
    (tmp_path / "space.yaml").write_text(SWEEP_SPACE)
    url = pg.url(USER, "optuna")
    cases = [
        (url.replace(f"{USER}@", f"{USER}:wrong-{PASSWORD}@"), {}, "password authentication failed"),  # in the URL
        (url, {"PGPASSWORD": f"wrong-{PASSWORD}"}, "password authentication failed"),  # in the environment
        (f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{free_port()}/optuna", {}, "refused"),  # nothing listens there
    ]
    for storage, env, message in cases:
        r = cli(*sweep_args(pg, pg_mlflow, tmp_path, storage, "--study", "bad", "--set",
                            "tracking.experiment=bad-sweeps"), cwd=tmp_path, env={"PGPASSFILE": "/nonexistent", **env})
        assert r.returncode == 2 and "cannot open the study storage" in r.stderr and message in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.startswith("error:") and r.stdout == "", r.stdout
        assert PASSWORD not in r.stderr + r.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["space.yaml"]  # no run folder, no study file
    assert pg_mlflow.client().get_experiment_by_name("bad-sweeps") is None  # no parent run
    if pg.sql("SELECT count(*) FROM pg_tables WHERE tablename = 'studies'", "optuna") == "1":
        assert pg.sql("SELECT count(*) FROM studies WHERE study_name = 'bad'", "optuna") == "0"
    # Nor in what the servers wrote.
    assert PASSWORD not in pg.log.read_text() + (pg_mlflow.root / "server.log").read_text()


def test_the_sweep_extra_brings_the_driver_a_plain_postgresql_url_opens():
    import configparser

    import sqlalchemy

    extras = configparser.ConfigParser()
    extras.read(ROOT / "setup.cfg")
    # SQLAlchemy 2.1 opens postgresql:// with psycopg (3); 2.0 with psycopg2.
    driver = sqlalchemy.create_engine("postgresql://u@127.0.0.1/db").dialect.driver
    for extra in ("sweep", "test"):
        names = [re.split(r"[\[<>=!~ ;]", line.strip())[0].lower()
                 for line in extras["options.extras_require"][extra].splitlines() if line.strip()]
        assert driver in names, (extra, driver, names)
