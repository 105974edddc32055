"""`tracked-train sweep`: two real worker processes sharing one SQLite study, a real MLflow server, SIGKILL.

One study runs through the module: two workers split 6 trials; one is killed
with SIGKILL in the middle of a trial and its command re-run while the other
goes on. The tests then read the study, the run folders, the MLflow parent run
and its children, and `compare`/`runs` back.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SWEEP_SPACE, SWEEP_TINY, cli, finished_trials, free_port, records, wait_until

pytestmark = pytest.mark.slow  # real processes and servers: `pytest -m "not slow"` leaves it out

SECRET = "canary-pw-7731"
# Two workers on two cores: one thread each.
ENV = {"OMP_NUM_THREADS": "1"}


def sweep_args(tmp, server, trials=6, *extra):
    args = ["sweep", "--space", str(tmp / "space.yaml"), "--storage", f"sqlite:///{tmp / 'study.db'}",
            "--study", "s", "--trials", str(trials), "--seed", "3", "--pruner-warmup-trials", "2",
            "--heartbeat", "1", "--tracker", "mlflow", "--set", f"tracking.mlflow.uri={server.uri}", *extra]
    for s in SWEEP_TINY:
        args += ["--set", s]
    return args


def worker(tmp, args, log_name):
    out = open(tmp / f"{log_name}.out", "w")
    err = open(tmp / f"{log_name}.err", "w")
    return subprocess.Popen([sys.executable, "-m", "tracked_train", *args], cwd=tmp, stdout=out, stderr=err,
                            env={**os.environ, **ENV})


def load_study(tmp):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name="s", storage=f"sqlite:///{tmp / 'study.db'}")


def sweep_runs(client, role=None):
    exp = client.get_experiment_by_name("sweeps")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`tracked_train.sweep` = 's'")
    return [r for r in runs if role is None or r.data.tags.get("tracked_train.sweep_role") == role]


def trial_of(log_file, nth):
    """The number of the ``nth`` trial a worker started (from its console lines), or None."""
    import re

    found = re.findall(r"sweep s: trial (\d+) \(", log_file.read_text() if log_file.exists() else "")
    return int(found[nth - 1]) if len(found) >= nth else None


def training(run_dir):
    try:
        return any("train/loss" in r for r in records(run_dir))
    except FileNotFoundError:
        return False


@pytest.fixture(scope="module")
def sweep_dir(mlflow_server, tmp_path_factory):
    """Workers A and B share a 6-trial study; A is killed with SIGKILL in its second trial and its command
    re-run (A2) while B goes on."""
    tmp = tmp_path_factory.mktemp("sweep")
    (tmp / "space.yaml").write_text(SWEEP_SPACE)
    args = sweep_args(tmp, mlflow_server)
    a, b = worker(tmp, args, "a"), worker(tmp, args, "b")
    wait_until(lambda: trial_of(tmp / "a.err", 2) is not None and
               training(tmp / "runs" / f"s-t{trial_of(tmp / 'a.err', 2):03d}"), "A's second trial to train", 300, a)
    a.send_signal(signal.SIGKILL)
    assert a.wait() == -signal.SIGKILL
    killed = trial_of(tmp / "a.err", 2)
    a2 = worker(tmp, args, "a2")
    for name, p in (("b", b), ("a2", a2)):
        assert p.wait(timeout=600) == 0, (tmp / f"{name}.err").read_text()[-3000:]
    return tmp, killed


def test_two_workers_share_six_trials_and_prune(sweep_dir):
    from optuna.trial import TrialState

    tmp, killed = sweep_dir
    trials = load_study(tmp).get_trials()
    done = finished_trials(trials)
    assert len(done) == 6, [(t.number, t.state) for t in trials]
    # Besides the killed trial, only a worker that asked for a 7th trial in the same instant as the 6th
    # may leave a failed one, marked so.
    assert trials[killed].state == TrialState.FAIL
    assert all(t.user_attrs.get("stop_reason") == "surplus" for t in trials if t not in done and t.number != killed)
    pruned = [t for t in done if t.state == TrialState.PRUNED]
    assert pruned, [(t.number, t.params, t.state) for t in done]
    for t in pruned:
        assert t.user_attrs["stop_reason"] == "pruned"
        stop = [r for r in records(Path(t.user_attrs["run_dir"])) if r.get("event") == "stop"][-1]
        assert stop["reason"] == "pruned" and "median" in stop["detail"] and stop["step"] < 20, stop
    # Each trial in its own run folder named after the study and the trial; the killed one's is continued by
    # the trial that runs its params again.
    assert sorted(p.name for p in (tmp / "runs").iterdir()) == sorted(
        f"s-t{t.number:03d}" for t in [*done, trials[killed]] if t.user_attrs.get("retry_of") != killed)
    # The best trial's params are printed (by the worker that finished the study last, and by the other).
    best = min((t for t in done if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    for name in ("b", "a2"):
        out = (tmp / f"{name}.out").read_text()
        assert "6 of 6 trials finished" in out
        assert f"best: trial {best.number} (run {best.user_attrs['run_name']}), val/loss {best.value:.4f}" in out
        assert f"training.warmup_steps={best.params['training.warmup_steps']}" in out and "training.lr=" in out


def test_killed_worker_trial_is_failed_and_its_params_continue_its_run(mlflow_server, sweep_dir):
    from tracked_train.mlflow.sync import spool_run_id

    tmp, killed = sweep_dir
    trials = load_study(tmp).get_trials()
    retry = next(t for t in trials if t.user_attrs.get("retry_of") == killed)
    assert retry.params == trials[killed].params and retry in finished_trials(trials)
    logs = (tmp / "b.err").read_text() + (tmp / "a2.err").read_text()
    assert f"trial {killed}'s worker stopped (no heartbeat" in logs
    assert "continuing the study" in (tmp / "a2.err").read_text()
    # Its params continue its folder from its checkpoint, into the same MLflow run: each step once.
    folder = tmp / "runs" / f"s-t{killed:03d}"
    assert retry.user_attrs["run_dir"] == trials[killed].user_attrs["run_dir"] == str(folder)
    assert f"(continuing trial {killed})" in logs
    steps = [r["step"] for r in records(folder) if "train/loss" in r]
    assert steps == list(range(1, steps[-1] + 1)) and any(r.get("event") == "resume" for r in records(folder))
    client = mlflow_server.client()
    run = client.get_run(spool_run_id(folder / "mlflow"))
    assert run.info.status == "FINISHED" and run.data.tags["tracked_train.trial"] == str(retry.number)
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss")) == steps


def test_one_parent_run_with_six_finished_children(mlflow_server, sweep_dir):
    tmp, killed = sweep_dir
    client = mlflow_server.client()
    parents = sweep_runs(client, "parent")
    assert len(parents) == 1
    parent = parents[0]
    # Made by the parent run, the one way runs make it too: the UI opens it on its runs table.
    assert client.get_experiment(parent.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    ok = children  # the killed trial's run was continued by its retry: one run per finished trial
    assert len(ok) == 6 and all(c.info.status == "FINISHED" for c in ok)
    reasons = {c.data.tags["stop_reason"] for c in ok}
    assert "pruned" in reasons and reasons <= {"pruned", "completed"}
    assert sorted(c.data.tags["tracked_train.trial"] for c in ok) == sorted(
        str(t.number) for t in finished_trials(load_study(tmp).get_trials()))
    assert all(c.data.params["tracking.wandb.group"] == "s" for c in ok)  # W&B's group for the trials
    # tracking.mlflow.log_model=false: no Logged Model, the best values still searchable run metrics.
    assert list(client.search_logged_models(experiment_ids=[parent.info.experiment_id])) == []
    assert all("best/val_loss" in c.data.metrics for c in ok if c.data.tags["stop_reason"] == "completed")
    # The parent: space, best value and params, a table and a plot.
    p = client.get_run(parent.info.run_id)
    assert p.info.status == "FINISHED"
    assert p.data.params == {"space.training.lr": "choice(0.003, 1e-05)", "space.training.warmup_steps": "int(0, 8)"}
    best = min(float(c.data.tags["best_val_loss"]) for c in ok if c.data.tags["stop_reason"] == "completed")
    assert float(p.data.tags["best_val_loss"]) == pytest.approx(best, rel=1e-5)
    assert p.data.metrics["best/val_loss"] == pytest.approx(best, rel=1e-5)
    assert p.data.metrics["trials/pruned"] >= 1
    assert p.data.metrics["trials/complete"] + p.data.metrics["trials/pruned"] == 6
    assert "best.training.lr" in p.data.tags and "best.training.warmup_steps" in p.data.tags
    assert p.data.tags["best_run_id"] in {c.info.run_id for c in ok}
    assert {a.path for a in client.list_artifacts(p.info.run_id)} >= {"trials.csv", "trials.png"}
    table = client.download_artifacts(p.info.run_id, "trials.csv", str(tmp / "dl"))
    assert len(open(table).read().strip().splitlines()) == 1 + len(load_study(tmp).get_trials())
    assert "| trial | state | val_loss |" in p.data.tags["mlflow.note.content"]


def test_compare_and_runs_understand_the_sweep(mlflow_server, sweep_dir):
    tmp, killed = sweep_dir
    env = {"MLFLOW_TRACKING_URI": mlflow_server.uri}
    r = cli("compare", "sweep:s", "--format", "json", cwd=tmp, env=env)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert len(out["runs"]) == 6 and all(x["name"].startswith("s-t") for x in out["runs"])
    assert {"training.lr", "training.warmup_steps"} & set(out["params"])
    r = cli("runs", "--sweep", "s", "--format", "json", cwd=tmp, env=env)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [x["trial"] for x in rows] == sorted(x["trial"] for x in rows) and len(rows) == 6
    assert "pruned" in {x["stop_reason"] for x in rows} <= {"pruned", "completed"}  # the killed one was continued
    # The same rows as a table and as CSV (the renderer `runs` and `compare` share).
    table = cli("runs", "--sweep", "s", cwd=tmp, env=env)
    lines = [ln.split() for ln in table.stdout.splitlines() if ln.strip()]
    assert table.returncode == 0 and lines[0][:3] == ["trial", "name", "status"], table.stdout
    assert [int(ln[0]) for ln in lines[1:] if ln[0].isdigit()] == [x["trial"] for x in rows]
    csv_rows = cli("runs", "--sweep", "s", "--format", "csv", cwd=tmp, env=env).stdout.splitlines()
    assert csv_rows[0].split(",")[:2] == ["trial", "name"] and len(csv_rows) == 7


BAD_SPACES = {
    "training.lr: [1, 2": "malformed YAML",
    "training.lrr: {uniform: [0.1, 0.2]}": "did you mean 'training.lr'",
    "training.lr: {normal: [0.1, 0.2]}": "expected one distribution",
    "training.lr: {log_uniform: [0.0, 0.1]}": "needs lo > 0",
    "training.warmup_steps: {uniform: [0, 10]}": "is an integer; use {int",
    "model.d_model: {choice: [32, 34]}": "model.d_model=34",
    "run.name: {choice: [a, b]}": "cannot be swept",
}


@pytest.mark.parametrize("space", BAD_SPACES)
def test_bad_space_names_the_problem(tmp_path, space):
    from tracked_train import config
    from tracked_train.errors import ConfigError
    from tracked_train.sweep import space as space_mod

    (tmp_path / "space.yaml").write_text(space + "\n")
    base = config.resolve(None, SWEEP_TINY)
    with pytest.raises(ConfigError) as e:
        space_mod.load(tmp_path / "space.yaml", base)
    assert BAD_SPACES[space] in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("extra, message", [
    (["--pruner", "mean"], "unknown pruner 'mean'; use --pruner median, hyperband or none"),
    (["--trials", "0"], "at least 1 trial"),
    (["--storage", "redis://localhost/0"], "is not a database URL"),
    (["--storage", "sqlite:///no/such/folder/s.db"], "folder no/such/folder does not exist"),
    (["--study", "a/b"], "study name 'a/b' contains a path separator"),
])
def test_bad_options_are_refused_before_anything_exists(mlflow_server, tmp_path, monkeypatch, extra, message):
    from click.testing import CliRunner

    from tracked_train.cli import main

    (tmp_path / "space.yaml").write_text(SWEEP_SPACE)
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, sweep_args(tmp_path, mlflow_server) + extra)
    assert r.exit_code == 2 and message in r.output, r.output
    assert r.output.startswith("error:") and len(r.output.strip().splitlines()) == 1, r.output
    assert list(tmp_path.iterdir()) == [tmp_path / "space.yaml"]  # no study file, no run folder


def test_bad_input_in_a_real_process_is_one_line_and_leaves_nothing(mlflow_server, tmp_path):
    (tmp_path / "space.yaml").write_text("training.lrr: {uniform: [0.1, 0.2]}\n")
    cases = [
        ([], "did you mean 'training.lr'"),
        (["--storage", f"postgresql://alice:{SECRET}@127.0.0.1:{free_port()}/db"], "cannot open the study storage"),
        (["--set", f"tracking.mlflow.uri=http://alice:{SECRET}@127.0.0.1:{free_port()}"], "is not reachable"),
    ]
    for extra, message in cases:
        r = cli(*sweep_args(tmp_path, mlflow_server), "--set", "tracking.experiment=bad-sweeps", *extra, cwd=tmp_path)
        assert r.returncode == 2 and message in r.stderr, (extra, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
        assert SECRET not in r.stderr + r.stdout
        (tmp_path / "space.yaml").write_text(SWEEP_SPACE)
    assert not (tmp_path / "study.db").exists() and not (tmp_path / "runs").exists()
    assert mlflow_server.client().get_experiment_by_name("bad-sweeps") is None  # no parent run either
    # A continued study must keep its space.
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 'study.db'}")
    study.set_user_attr("tracked_train.space", json.dumps({"training.lr": "uniform(0.1, 0.2)"}))
    r = cli(*sweep_args(tmp_path, mlflow_server), "--set", "tracking.experiment=bad-sweeps", cwd=tmp_path)
    assert r.returncode == 2 and "was created with another space" in r.stderr, r.stderr
    assert mlflow_server.client().get_experiment_by_name("bad-sweeps") is None


def test_sweep_quick_space_fits_quick_yaml():
    from pathlib import Path

    from tracked_train import config
    from tracked_train.sweep import space

    root = Path(__file__).resolve().parents[1] / "experiments"
    loaded = space.load(root / "sweep-quick.yaml", config.resolve(str(root / "quick.yaml"), [], environ={}))
    assert set(loaded.describe()) == {"training.lr", "model.d_model", "training.warmup_steps"}


def test_run_takes_positional_overrides(tmp_path):
    r = cli("run", "--print-config", "training.lr=0.01", "model.d_model=96", "--set", "training.lr=0.02",
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "lr: 0.02" in r.stdout and "d_model: 96" in r.stdout  # --set after positional wins
    r = cli("run", "--print-config", "training.lr", cwd=tmp_path)
    assert r.returncode == 2 and "overrides are KEY=VALUE" in r.stderr


def test_a_query_failing_inside_a_transaction_the_server_dropped_counts_as_the_outage():
    # Seen with PostgreSQL restarting: Optuna's trial query catches the dropped connection and tries a second
    # query in the same transaction, whose PendingRollbackError carries the OperationalError as its context only.
    import optuna
    from sqlalchemy import exc

    from tracked_train.sweep.study import lost_connection

    dropped = exc.OperationalError("SELECT 1", {}, Exception("terminating connection due to administrator command"))
    try:
        try:
            raise dropped
        except exc.OperationalError:
            try:
                raise exc.PendingRollbackError("Can't reconnect until invalid transaction is rolled back")
            except exc.SQLAlchemyError as pending:
                raise optuna.exceptions.StorageInternalError("An exception is raised during the commit") from pending
    except optuna.exceptions.StorageInternalError as e:
        assert lost_connection(e) is dropped
    # A bad commit with no connection lost behind it is not waited for.
    try:
        raise optuna.exceptions.StorageInternalError("commit") from exc.DataError("INSERT", {}, Exception("too long"))
    except optuna.exceptions.StorageInternalError as e:
        assert lost_connection(e) is None
