"""Tracking under faults, end to end: real processes, real signals, a real MLflow server.

Each test breaks something a user or an attacker could break (a second
process, kill -9, a server that goes away or forgets the run, a damaged spool,
bad input at resume, a hostile run name, a password in the URI) and checks
that nothing is lost, duplicated, left RUNNING or leaked.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import SHAKESPEARE, cli, metric_lines, records, sets, wait_until

from tracked_train.testing import MlflowServer

pytestmark = pytest.mark.slow  # real processes and servers: `pytest -m "not slow"` leaves it out


def mlflow_sets(uri: str, *extra: str) -> list[str]:
    return sets("tracking.trackers=[jsonl, mlflow]", f"tracking.mlflow.uri={uri}", "tracking.experiment=faults",
                *extra)


def start(cwd: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tracked_train", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


def last_step(run_dir: Path) -> int:
    try:
        return max((s for s, _ in metric_lines(run_dir)), default=0)
    except (OSError, ValueError):
        return 0  # not written yet, or a line being written


def checkpoint_step(run_dir: Path) -> int:
    try:
        return json.loads((run_dir / "checkpoints" / "last" / "manifest.json").read_text())["step"]
    except (OSError, ValueError):
        return 0


def kill9(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate()


def run_id_of(run_dir: Path) -> str | None:
    return json.loads((run_dir / "mlflow" / "state.json").read_text()).get("run_id")


def server_losses(client, run_id: str, key: str = "train/loss") -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def assert_one_clean_line(r: subprocess.CompletedProcess, *words: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, r.stderr
    for w in words:
        assert w in errors[0], errors[0]


# Slow enough (a few hundred steps) that a test can act while it trains.
LONG = ("training.max_steps=400", "training.eval_every=200", "training.checkpoint_every=10")


# -- 1. one run lifecycle: the lock, and failures reaching every tracker ----------------------------

def test_a_second_process_cannot_resume_or_sync_a_folder_in_use(tmp_path):
    proc = start(tmp_path, "run", "--run-name", "live", *sets(*LONG))
    run_dir = tmp_path / "runs" / "live"
    try:
        wait_until(lambda: checkpoint_step(run_dir) >= 10, "the first checkpoint", proc=proc)
        tries = [start(tmp_path, *args) for args in (("resume", str(run_dir)), ("sync", str(run_dir)))]  # at once
        for t in tries:
            out, err = t.communicate(timeout=300)
            assert_one_clean_line(subprocess.CompletedProcess(t.args, t.returncode, out, err), "in use by process",
                                  str(proc.pid))
        assert proc.poll() is None  # the live run was not disturbed
    finally:
        kill9(proc)
    r = cli("resume", str(run_dir), *sets("training.max_steps=30"), "--allow-config-change", cwd=tmp_path)
    assert r.returncode == 0, r.stderr  # the lock died with its process: kill -9 leaves no stale lock


@pytest.mark.parametrize("case", ["binary", "latin1", "long-name", "output-is-a-file", "name-with-slash"])
def test_bad_input_to_run_is_one_line_exit_2_and_no_folder(tmp_path, case):
    extra: list[str] = []
    flags: list[str] = []
    data = tmp_path / "data.txt"
    if case == "binary":
        data.write_bytes(b"ROMEO\x00\x01\x02" * 1000)
        extra = ["data.source=text", f"data.train_files=[{data}]"]
    elif case == "latin1":
        data.write_bytes("Caf\u00e9 au lait\n".encode("latin1") * 1000)
        extra = ["data.source=text", f"data.train_files=[{data}]"]
    elif case == "long-name":
        flags = ["--run-name", "x" * 300]
    elif case == "output-is-a-file":
        (tmp_path / "afile").write_text("not a folder")
        flags = ["--output-dir", str(tmp_path / "afile" / "runs")]
    else:
        flags = ["--run-name", "../escape"]
    r = cli("run", *flags, *sets("training.max_steps=3", *extra), cwd=tmp_path)
    assert_one_clean_line(r)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    assert not (tmp_path / "escape").exists()


def test_binary_data_on_resume_is_refused_like_on_run(tmp_path):
    data = tmp_path / "train.txt"
    data.write_text((SHAKESPEARE / "valid.txt").read_text()[:150_000])
    r = cli("run", "--run-name", "t", *sets("data.source=text", f"data.train_files=[{data}]",
                                            "training.max_steps=10", "training.eval_every=5"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    data.write_bytes(b"\xff\xfe\x00garbage" * 1000)
    r = cli("resume", str(tmp_path / "runs" / "t"), *sets("training.max_steps=20"), "--allow-config-change",
            cwd=tmp_path)
    assert_one_clean_line(r, "train.txt")


# -- 2. a folder is always resumable -------------------------------------------------------------------

def test_killed_before_its_first_checkpoint_resumes_from_step_0_into_the_same_run(mlflow_server, tmp_path):
    args = mlflow_sets(mlflow_server.uri, "training.max_steps=30", "training.eval_every=10",
                       "training.checkpoint_every=1000")
    proc = start(tmp_path, "run", "--run-name", "early", *args)
    run_dir = tmp_path / "runs" / "early"
    wait_until(lambda: last_step(run_dir) >= 3, "a few steps", proc=proc)
    kill9(proc)
    assert checkpoint_step(run_dir) == 0
    assert cli("run", "--run-name", "early", *args, cwd=tmp_path).returncode == 2  # the folder is taken...
    r = cli("resume", str(run_dir), cwd=tmp_path)  # ...and resumable
    assert r.returncode == 0, r.stderr
    assert "no checkpoint yet" in r.stderr
    client = mlflow_server.client()
    runs = client.search_runs([client.get_experiment_by_name("faults").experiment_id],
                              filter_string="attributes.run_name = 'early'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert [s for s, _ in server_losses(client, runs[0].info.run_id)] == list(range(1, 31))
    assert dict(server_losses(client, runs[0].info.run_id)) == dict(metric_lines(run_dir))


def test_resuming_a_finished_run_says_so_and_touches_nothing(tmp_path):
    r = cli("run", "--run-name", "done", *sets("training.max_steps=6", "training.eval_every=3"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run_dir = tmp_path / "runs" / "done"
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.name != ".lock"}
    r = cli("resume", str(run_dir), cwd=tmp_path)
    assert r.returncode == 0 and "already finished (completed at step 6)" in r.stderr, r.stderr
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.name != ".lock"} == before


# -- 3. the spool never loses or silently skips ----------------------------------------------------------

def test_killed_run_data_gone_then_a_garbage_and_a_torn_spool_line(mlflow_server, tmp_path):
    """One kill -9, two faults in turn (one trained and killed run serves both; merged to save its cost):
    resume with its data gone exits 2 and repairs the RUNNING status; with the data back and a garbage and a
    torn line in the spool, resume sets those aside and the rest drains, each step once."""
    data = tmp_path / "train.txt"
    text = (SHAKESPEARE / "valid.txt").read_text()[:150_000]
    data.write_text(text)
    args = mlflow_sets(mlflow_server.uri, "data.source=text", f"data.train_files=[{data}]", "training.max_steps=40",
                       "training.eval_every=20", "training.checkpoint_every=10")
    proc = start(tmp_path, "run", "--run-name", "torn", *args)
    run_dir = tmp_path / "runs" / "torn"
    wait_until(lambda: checkpoint_step(run_dir) >= 10 and last_step(run_dir) >= 15, "step 15", proc=proc)
    kill9(proc)
    run_id = run_id_of(run_dir)
    client = mlflow_server.client()
    assert client.get_run(run_id).info.status == "RUNNING"  # what kill -9 leaves

    # Its data gone: one clean line, exit 2, the status repaired, the record kept.
    data.unlink()
    before = (run_dir / "metrics.jsonl").read_bytes()
    r = cli("resume", str(run_dir), cwd=tmp_path)
    assert_one_clean_line(r, "does not exist", "train.txt")
    assert client.get_run(run_id).info.status == "KILLED"
    assert (run_dir / "metrics.jsonl").read_bytes().startswith(before[: len(before) // 2])  # the record is kept

    # The data back, a damaged spool: garbage and a torn line are set aside, the rest drains.
    data.write_text(text)
    with open(run_dir / "mlflow" / "spool.jsonl", "a") as f:
        f.write('{"k": "bogus"}\nnot json at all\n[1, 2]\n{"k": "metrics", "step": 9')  # the last one torn
    r = cli("resume", str(run_dir), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    quarantined = (run_dir / "mlflow" / "quarantine.jsonl").read_text().splitlines()
    assert len(quarantined) == 4, quarantined
    state = json.loads((run_dir / "mlflow" / "state.json").read_text())
    assert state["acked"] == (run_dir / "mlflow" / "spool.jsonl").stat().st_size  # everything else went
    assert state["run_id"] == run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert dict(server_losses(client, run.info.run_id)) == dict(metric_lines(run_dir))
    assert [s for s, _ in server_losses(client, run.info.run_id)] == list(range(1, 41))  # each step once


def test_an_event_the_server_refuses_is_kept_with_its_reason_and_sync_says_so(mlflow_server, tmp_path):
    r = cli("run", "--run-name", "refused", *mlflow_sets(mlflow_server.uri, "training.max_steps=6"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run_dir = tmp_path / "runs" / "refused"
    with open(run_dir / "mlflow" / "spool.jsonl", "a") as f:
        f.write(json.dumps({"k": "metrics", "step": 7, "t": 1, "m": {"bad!key": 1.0}}) + "\n")
        f.write(json.dumps({"k": "metrics", "step": 7, "t": 1, "m": {"extra/ok": 2.0}}) + "\n")
    r = cli("sync", str(run_dir), cwd=tmp_path)
    assert r.returncode == 1 and "1 events refused" in r.stdout, r.stdout + r.stderr
    rejected = [json.loads(line) for line in (run_dir / "mlflow" / "rejected.jsonl").read_text().splitlines()]
    assert [x["event"]["m"] for x in rejected] == [{"bad!key": 1.0}]
    assert "Names may only contain" in rejected[0]["reason"]
    assert mlflow_server.client().get_run(run_id_of(run_dir)).data.metrics["extra/ok"] == 2.0  # the rest went on


# -- 4. one tracked run per run ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def own_server(tmp_path_factory):
    """A server of this module's own, for the tests that must have it down or stop it (the session's stays up).
    Made here, started by the tests: the two below share it, which saves a server start."""
    server = MlflowServer(tmp_path_factory.mktemp("own-server"))
    yield server
    server.stop()


def test_server_down_at_start_then_kill_9_then_resume_is_one_run_with_every_step_once(own_server, tmp_path):
    server = own_server
    server.stop()  # not started yet (a no-op then): its port answers nothing
    args = sets("tracking.trackers=[jsonl, mlflow]", f"tracking.mlflow.uri={server.uri}",
                "tracking.experiment=faults-late", "tracking.required=false", "training.max_steps=40",
                "training.eval_every=20", "training.checkpoint_every=10")
    proc = start(tmp_path, "run", "--run-name", "late", *args)
    run_dir = tmp_path / "runs" / "late"
    wait_until(lambda: checkpoint_step(run_dir) >= 10 and last_step(run_dir) >= 15, "step 15", proc=proc)
    kill9(proc)
    assert run_id_of(run_dir) is None  # never created: the server was down the whole time
    server.start()  # left up: the next test uses it
    r = cli("resume", str(run_dir), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    client = server.client()
    runs = client.search_runs([client.get_experiment_by_name("faults-late").experiment_id])
    assert len(runs) == 1 and runs[0].info.run_id == run_id_of(run_dir)
    assert runs[0].info.status == "FINISHED"
    assert [s for s, _ in server_losses(client, runs[0].info.run_id)] == list(range(1, 41))


def test_sync_to_a_server_that_lost_the_run_acknowledges_nothing_then_delivers(mlflow_server, own_server,
                                                                                   tmp_path):
    server_a = own_server  # after the test above: already up, so it is started once for both
    if server_a.proc is None:
        server_a.start()
    args = mlflow_sets(server_a.uri, *LONG)
    proc = start(tmp_path, "run", "--run-name", "lost", *args,
                 env={"TRACKED_TRAIN_MLFLOW_FLUSH_TIMEOUT": "1"})
    run_dir = tmp_path / "runs" / "lost"
    wait_until(lambda: last_step(run_dir) >= 5, "step 5", proc=proc)
    server_a.stop()  # the server goes away mid-run...
    wait_until(lambda: last_step(run_dir) >= 20, "step 20", proc=proc)
    proc.send_signal(signal.SIGTERM)  # ...and the run ends while it is away
    proc.communicate(timeout=120)
    assert proc.returncode == 130
    acked = json.loads((run_dir / "mlflow" / "state.json").read_text())["acked"]
    assert acked < (run_dir / "mlflow" / "spool.jsonl").stat().st_size

    # Another server (as after a restart with an empty database): it never heard of the run.
    r = cli("sync", str(run_dir), cwd=tmp_path, env={"MLFLOW_TRACKING_URI": mlflow_server.uri})
    assert r.returncode == 1, r.stdout + r.stderr
    assert "does not exist" in r.stderr and "still unsent" in r.stdout
    assert json.loads((run_dir / "mlflow" / "state.json").read_text())["acked"] == acked  # nothing marked sent

    server_a.start()  # the right server: everything arrives
    r = cli("sync", str(run_dir), cwd=tmp_path)
    assert r.returncode == 0 and "everything is on the server" in r.stdout, r.stdout + r.stderr
    client = server_a.client()
    run = client.get_run(run_id_of(run_dir))
    assert run.info.status == "KILLED" and run.data.tags["stop_reason"] == "interrupted"
    assert dict(server_losses(client, run.info.run_id)) == dict(metric_lines(run_dir))


def _delivered(run_dir: Path) -> int:
    return json.loads((run_dir / "mlflow" / "state.json").read_text()).get("delivered", 0)


def _mark_in(db: Path, run_id: str) -> int:
    """The delivery mark a copy of the server's database holds for the run (its tracked_train.delivered tag)."""
    import sqlite3

    with sqlite3.connect(db) as con:
        row = con.execute("SELECT value FROM tags WHERE run_uuid = ? AND key = 'tracked_train.delivered'",
                          (run_id,)).fetchone()
    return int(row[0])


def test_a_server_restored_from_an_older_backup_gets_nothing_until_the_right_database_is_back(own_server,
                                                                                            tmp_path):
    """The database behind the URL is swapped for a backup taken earlier in the run: the run exists there but
    lacks events the server acknowledged. Nothing more goes to it (training goes on), `resume` and `sync` refuse
    it in one line; once the right database is back, `sync` delivers everything, each step once."""
    import sqlite3

    server = own_server
    if server.proc is None:
        server.start()
    # Steps enough never to end by itself: it is stopped with SIGTERM once it trained on past the swap.
    proc = start(tmp_path, "run", "--run-name", "restored",
                 *mlflow_sets(server.uri, "training.max_steps=100000", "training.eval_every=200",
                              "training.checkpoint_every=10"),
                 env={"TRACKED_TRAIN_MLFLOW_FLUSH_TIMEOUT": "1", "TRACKED_TRAIN_MLFLOW_SEND_INTERVAL_S": "0.2"})
    run_dir = tmp_path / "runs" / "restored"
    client = server.client()

    def on_server() -> int:
        run_id = (run_dir / "mlflow" / "state.json").exists() and run_id_of(run_dir)
        return max((s for s, _ in server_losses(client, run_id)), default=0) if run_id else 0

    wait_until(lambda: on_server() >= 3 and _delivered(run_dir) > 0, "steps on the server", proc=proc)
    backup, real = tmp_path / "backup.db", tmp_path / "real.db"
    with sqlite3.connect(server.root / "mlflow.db") as live, sqlite3.connect(backup) as copy:
        live.backup(copy)  # a consistent copy of the live database: the "older backup"
    run_id = run_id_of(run_dir)
    mark = _mark_in(backup, run_id)
    wait_until(lambda: _delivered(run_dir) > mark, "more events acknowledged after the backup", proc=proc)
    proc.send_signal(signal.SIGSTOP)  # frozen while the database is swapped, however fast the machine
    server.stop()
    (server.root / "mlflow.db").rename(real)
    (server.root / "mlflow.db").write_bytes(backup.read_bytes())  # restored from the backup, same address
    server.start()
    swapped_at = last_step(run_dir)
    proc.send_signal(signal.SIGCONT)
    wait_until(lambda: last_step(run_dir) >= swapped_at + 30, "training on after the swap", proc=proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "holds fewer of this run's events than it acknowledged" in err, err[-3000:]
    held = client.get_run(run_id)
    assert int(held.data.tags["tracked_train.delivered"]) == mark  # it received nothing more
    assert dict(server_losses(client, run_id)).items() <= dict(metric_lines(run_dir)).items()
    assert 3 <= max(s for s, _ in server_losses(client, run_id)) < swapped_at

    acked = json.loads((run_dir / "mlflow" / "state.json").read_text())["acked"]
    r = cli("sync", str(run_dir), cwd=tmp_path)
    assert r.returncode == 1 and "holds fewer of this run's events" in r.stderr, r.stdout + r.stderr
    r = cli("resume", str(run_dir), cwd=tmp_path)
    assert_one_clean_line(r, "holds fewer of this run's events")
    assert json.loads((run_dir / "mlflow" / "state.json").read_text())["acked"] == acked  # nothing marked sent
    assert int(client.get_run(run_id).data.tags["tracked_train.delivered"]) == mark

    server.stop()  # the right database back
    (server.root / "mlflow.db").unlink()
    real.rename(server.root / "mlflow.db")
    server.start()
    r = cli("sync", str(run_dir), cwd=tmp_path)
    assert r.returncode == 0 and "everything is on the server" in r.stdout, r.stdout + r.stderr
    run = client.get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags["stop_reason"] == "interrupted"
    assert server_losses(client, run_id) == sorted(metric_lines(run_dir))  # every step once


def test_an_inexact_resume_leaves_mlflow_wandb_and_jsonl_agreeing_at_every_step(mlflow_server, tmp_path):
    from conftest import history, wandb_env, wandb_records

    env = wandb_env(tmp_path)
    args = sets("tracking.trackers=[jsonl, mlflow, wandb]", f"tracking.mlflow.uri={mlflow_server.uri}",
                "tracking.experiment=faults", "training.max_steps=30", "training.eval_every=5",
                "training.checkpoint_every=10")
    proc = start(tmp_path, "run", "--run-name", "inexact", *args, env=env)
    run_dir = tmp_path / "runs" / "inexact"
    wait_until(lambda: checkpoint_step(run_dir) >= 10 and last_step(run_dir) >= 18, "step 18", proc=proc)
    kill9(proc)
    best = json.loads((run_dir / "checkpoints" / "best" / "manifest.json").read_text())["step"]
    old_run = run_id_of(run_dir)
    r = cli("resume", str(run_dir), "--from", "best", "--allow-config-change", "--set", "training.lr=0.003",
            cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert "continuing in new run" in r.stderr, r.stderr[:3000]
    jsonl = {k: dict(metric_lines(run_dir, k)) for k in ("train/loss", "train/lr")}
    assert sorted(jsonl["train/loss"]) == list(range(1, 31))

    client = mlflow_server.client()
    new_run = run_id_of(run_dir)
    assert new_run != old_run and client.get_run(new_run).data.tags["resumed_from"] == old_run
    for key, values in jsonl.items():
        new_points = dict(server_losses(client, new_run, key))
        assert new_points == {s: v for s, v in values.items() if s > best}
        old_points = dict(server_losses(client, old_run, key))
        assert {s: v for s, v in old_points.items() if s <= best} == {s: v for s, v in values.items() if s <= best}

    recs = wandb_records(run_dir)  # W&B rewound to `best`: steps after it come from the resumed segment
    branch = [r_["run"]["branch_point"] for r_ in recs if r_["type"] == "run" and r_["run"].get("branch_point")]
    assert [int(b["value"]) for b in branch] == [best] and branch[0]["metric"] == "_step"
    rows = dict(history(recs, "train/loss"))  # segments in order: the later one replaces the steps after `best`
    assert {s for s in rows if s > best} == {s for s in jsonl["train/loss"] if s > best}
    # W&B's offline writer buffers: a kill -9 may cost it the killed segment's rows (its own limit). What it
    # holds agrees with metrics.jsonl at every step.
    assert rows and all(rows[s] == jsonl["train/loss"][s] for s in rows)


# -- 5. untrusted names ------------------------------------------------------------------------------------

def test_a_hostile_run_name_on_the_server_stays_inside_output_dir(mlflow_server, tmp_path):
    machine1, machine2 = tmp_path / "m1", tmp_path / "m2"
    machine1.mkdir()
    machine2.mkdir()
    proc = start(machine1, "run", "--run-name", "victim",
                 *mlflow_sets(mlflow_server.uri, "training.max_steps=100", "training.checkpoint_every=10"))
    run_dir = machine1 / "runs" / "victim"
    client = mlflow_server.client()

    def uploaded() -> bool:
        rid = run_id_of(run_dir) if (run_dir / "mlflow" / "state.json").exists() else None
        return bool(rid) and any(a.path.endswith("manifest.json")
                                 for a in client.list_artifacts(rid, "checkpoints/last"))

    wait_until(uploaded, "checkpoints/last on the server", proc=proc)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    run_id = run_id_of(run_dir)
    client.update_run(run_id, name="../../escaped")
    downloads = set(Path(tempfile.gettempdir()).glob("tracked-train-*"))
    r = cli("resume", f"mlflow:{run_id}", "--set", "run.output_dir=out", cwd=machine2,
            env={"MLFLOW_TRACKING_URI": mlflow_server.uri})
    assert r.returncode == 0, r.stderr
    made = [p for p in (machine2 / "out").iterdir() if p.is_dir()]
    assert len(made) == 1 and made[0].name == "escaped"  # the server's name, made a plain folder name
    assert not (tmp_path / "escaped").exists() and not (machine2 / "escaped").exists()
    assert set(Path(tempfile.gettempdir()).glob("tracked-train-*")) == downloads  # the download was removed


# -- 6. secrets --------------------------------------------------------------------------------------------

def test_a_password_in_the_tracking_uri_reaches_no_file_and_no_console(mlflow_server, tmp_path):
    from conftest import wandb_env

    password = "pw-canary-5150"
    uri = mlflow_server.uri.replace("http://", f"http://alice:{password}@")
    env = {**wandb_env(tmp_path), "MLFLOW_TRACKING_URI": uri}
    r = cli("run", "--run-name", "secret", *sets("tracking.trackers=[jsonl, mlflow, wandb]",
                                                 "training.max_steps=6"), cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    r2 = cli("run", "--run-name", "secret2", *sets("tracking.trackers=[jsonl, mlflow]", "training.max_steps=3"),
             cwd=tmp_path, env={"MLFLOW_TRACKING_URI": f"http://alice:{password}@127.0.0.1:9"})
    assert r2.returncode == 2  # unreachable: the message names the server, not the password
    assert "127.0.0.1:9" in r2.stderr
    console = r.stdout + r.stderr + r2.stdout + r2.stderr
    assert password not in console
    leaks = [p for p in tmp_path.rglob("*") if p.is_file() and password.encode() in p.read_bytes()]
    assert leaks == []
    run = mlflow_server.client().get_run(run_id_of(tmp_path / "runs" / "secret"))
    assert run.info.status == "FINISHED"  # the credentials still reached MLflow, through its variables
    assert all(password not in v for v in (*run.data.params.values(), *run.data.tags.values()))


# -- 7. a full disk ----------------------------------------------------------------------------------------

def _small_fs_works(tmp_path: Path) -> bool:
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            f"mount -t tmpfs -o size=1m tmpfs {tmp_path}"], capture_output=True)
    return probe.returncode == 0


def test_a_full_disk_fails_the_run_with_the_reason_and_keeps_the_last_checkpoint(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if not _small_fs_works(disk):
        pytest.skip("needs unprivileged user namespaces (unshare) to mount a small tmpfs")
    out = tmp_path / "copies"
    run = [sys.executable, "-m", "tracked_train", "run", "--run-name", "full", "--output-dir", str(disk),
           *sets("model.d_model=128", "training.max_steps=200", "training.checkpoint_every=5",
                 "training.eval_every=1000")]
    resume = [sys.executable, "-m", "tracked_train", "resume", str(disk / "full"),
              "--set", "training.max_steps=12", "--allow-config-change"]
    # In a private mount namespace: a 6 MiB disk fills up while training; the copies leave it for us to read.
    script = (f"mount -t tmpfs -o size=6m tmpfs {disk} && "
              f"{subprocess.list2cmdline(run)}; echo run=$? > {out}.rc; cp -a {disk}/full {out}-full; "
              f"mount -o remount,size=256m {disk} && {subprocess.list2cmdline(resume)}; "
              f"echo resume=$? >> {out}.rc; cp -a {disk}/full {out}-resumed")
    r = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    codes = dict(line.split("=") for line in Path(f"{out}.rc").read_text().split())
    assert codes["run"] == "1", r.stderr[-3000:]
    stop = [x for x in records(Path(f"{out}-full")) if x.get("event") == "stop"][-1]
    assert stop["reason"] == "failed" and "No space left on device" in stop["detail"]
    assert "Traceback" not in r.stderr
    saved = json.loads((Path(f"{out}-full") / "checkpoints" / "last" / "manifest.json").read_text())["step"]
    assert saved >= 5  # the last good checkpoint is whole
    assert codes["resume"] == "0", r.stderr[-3000:]
    resumed = Path(f"{out}-resumed")
    assert [x for x in records(resumed) if x.get("event") == "stop"][-1]["reason"] == "completed"
    assert not list((resumed / "checkpoints").glob(".*"))  # no .tmp / .old folders left


def test_a_checkpoint_whose_tensors_do_not_fit_its_config_is_refused_and_leaves_nothing(tmp_path):
    from tracked_train import checkpoint

    r = cli("run", "--run-name", "src", *sets("training.max_steps=4", "training.eval_every=2"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    state = checkpoint.load(tmp_path / "runs" / "src" / "checkpoints" / "last")
    state["config"]["model"]["d_model"] = 128  # as a tampered or mixed-up upload would say
    checkpoint.save(tmp_path / "bad", state, {})
    (tmp_path / "out").mkdir()
    for args in (("resume", str(tmp_path / "bad"), "--set", "run.output_dir=out"),
                 ("generate", str(tmp_path / "bad"), "--prompt", "x"),
                 ("run", "--init-from", str(tmp_path / "bad"), "--output-dir", "out", *sets("training.max_steps=2"))):
        r = cli(*args, cwd=tmp_path)
        assert_one_clean_line(r, "do not fit")
    assert list((tmp_path / "out").iterdir()) == []  # nothing half-made


def test_resuming_a_checkpoint_folder_continues_in_a_new_run_folder_not_inside_it(tmp_path):
    r = cli("run", "--run-name", "base", *sets("training.max_steps=6", "training.eval_every=3",
                                               "training.checkpoint_every=3"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    best = tmp_path / "runs" / "base" / "checkpoints" / "best"
    before = sorted(p.name for p in best.iterdir())
    r = cli("resume", str(best), "--set", "training.max_steps=8", "--allow-config-change", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in best.iterdir()) == before  # the checkpoint folder is only read
    continued = [p for p in (tmp_path / "runs").iterdir() if p.name != "base"]
    assert len(continued) == 1 and metric_lines(continued[0])[-1][0] == 8
