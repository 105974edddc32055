"""A task of one's own under the real loop, in this process: a run takes a fraction of a second.

The tasks (tests/tiny_task.py) are loaded the way a user's is, by their file (``task: path/to/file.py:Class``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import BROKEN_TASKS, TASK_BASE, TINY_TASK, resolve_task, run_task, task_records, task_spec


def series(run_dir: Path, key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in task_records(run_dir) if key in r]


def stop_event(run_dir: Path) -> dict:
    return [r for r in task_records(run_dir) if r.get("event") == "stop"][-1]


# --- what a task's run logs ----------------------------------------------------------------------------------

def test_loss_components_every_step_and_validation_metrics_at_evaluations(tmp_path):
    code, run_dir = run_task(tmp_path, "a")
    assert code == 0 and stop_event(run_dir)["reason"] == "completed"
    total, a, b = (series(run_dir, k) for k in ("train/loss", "train/loss/a", "train/loss/b"))
    assert [s for s, _ in total] == [s for s, _ in a] == [s for s, _ in b] == list(range(1, 41))
    for (_, t), (_, va), (_, vb) in zip(total, a, b):
        assert t == pytest.approx(va + 0.5 * vb, rel=1e-5)  # the total the optimizer minimised, and its parts
    assert sum(v for _, v in a[-5:]) < sum(v for _, v in a[:5])  # it learns
    logged = {k for r in task_records(run_dir) if "event" not in r for k in r}
    assert {k for k in logged if k.startswith("val/")} == {"val/loss", "val/accuracy"}
    assert [s for s, _ in series(run_dir, "val/accuracy")] == [10, 20, 30, 40]
    assert "train/perplexity" not in logged  # the language model's figure, not every task's
    params = next(r["params"] for r in task_records(run_dir) if r.get("event") == "params")
    assert params["task"] == TINY_TASK and params["task_args.hidden"] == 8
    assert not any(k.startswith(("model.", "data.", "tokenizer.")) for k in params)


def test_patience_on_a_metric_where_higher_is_better(tmp_path):
    # A learning rate too small to move any prediction: the accuracy stays where it started.
    code, run_dir = run_task(tmp_path, "p", "training.lr=1e-7", "training.min_lr=0", "training.eval_every=5",
                             "early_stopping.monitor=val/accuracy", "early_stopping.mode=max",
                             "early_stopping.patience=2")
    accuracy = series(run_dir, "val/accuracy")
    assert [s for s, _ in accuracy] == [5, 10, 15] and len({v for _, v in accuracy}) == 1
    stop = stop_event(run_dir)
    assert code == 0 and stop["reason"] == "patience" and stop["step"] == 15
    assert "val/accuracy did not improve" in stop["detail"] and "(max)" in stop["detail"]
    assert f"best {accuracy[0][1]:.4f} at step 5" in stop["detail"]
    assert max(s for s, _ in series(run_dir, "train/loss")) == 15


@pytest.mark.parametrize("task, sets", [
    (TINY_TASK, ["early_stopping.monitor=val/accuracy", "early_stopping.mode=max"]),
    (task_spec("AccuracyTask"), []),  # the task's own monitor and mode
], ids=["set", "the task's own"])
def test_target_on_a_metric_where_higher_is_better(tmp_path, task, sets):
    code, run_dir = run_task(tmp_path, "t", "training.eval_every=5", "early_stopping.target=0.97", *sets, task=task)
    accuracy = series(run_dir, "val/accuracy")
    first = next(s for s, v in accuracy if v >= 0.97)
    stop = stop_event(run_dir)
    assert code == 0 and stop["reason"] == "target_reached" and stop["step"] == first < 40
    assert all(v < 0.97 for s, v in accuracy if s < first) and accuracy[-1][0] == first
    assert "Reached the target val/accuracy 0.97" in stop["detail"]


# --- exact resume --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("how, position, every, stopped_at, resumed_from", [
    ("sigint", 19 * 16, 1, 20, 20),  # Ctrl-C in step 20: it ends, is saved, and the run stops (exit 130)
    ("raise", 16 * 16, 1, 16, 10),  # a second Ctrl-C in step 17: stopped at once; steps 11-16 logged after `last`
    # Values read back every 7 steps (and at step 1 and each evaluation and checkpoint): the same values.
    ("sigint", 18 * 16, 7, 19, 19),  # read back at once for the stop, between two read-backs
    ("raise", 16 * 16, 7, 14, 10),  # steps 15-16 were never read back: the resume trains them again
], ids=["sigint", "raise", "sigint-every-7", "raise-every-7"])
def test_a_resumed_run_logs_the_uninterrupted_values(tmp_path, monkeypatch, how, position, every, stopped_at,
                                                      resumed_from):
    from tracked_train.resume import resume

    assert run_task(tmp_path, "a")[0] == 0  # read back every step
    monkeypatch.setenv("TINY_TASK_STOP_AT", f"{how}:{position}")
    code, b = run_task(tmp_path, "b", f"logging.every={every}")
    monkeypatch.delenv("TINY_TASK_STOP_AT")
    assert code == 130 and max(s for s, _ in series(b, "train/loss")) == stopped_at
    # Resumed reading back every 3 steps: not a config change (an exact resume), the same values.
    assert resume(str(b), ["logging.every=3"] if every > 1 else []) == 0
    events = [r for r in task_records(b) if "event" in r]
    resumed = next(i for i, r in enumerate(task_records(b)) if r.get("event") == "resume")
    assert events[-1]["reason"] == "completed" and task_records(b)[resumed]["step"] == resumed_from
    after = [r["step"] for r in task_records(b)[resumed:] if "train/loss" in r]
    assert after == list(range(resumed_from + 1, 41))  # continued from the checkpoint, not from step 0
    a = tmp_path / "a"
    keys = {k for r in task_records(a) if "event" not in r for k in r} - {"step", "time", "train/tokens_per_sec"}
    assert {"train/loss/a", "val/accuracy"} <= keys
    for key in sorted(keys):
        # An interrupt between two evaluations adds one at the stop step ("every run ends evaluated").
        extra = stopped_at if key.startswith("val/") and stopped_at % 10 else None
        assert [x for x in series(b, key) if x[0] != extra] == series(a, key), key  # bit for bit, each step once


# --- reading values back from the device every N steps (logging.every) --------------------------------------

def test_reading_back_every_10_steps_logs_each_steps_own_values_to_every_tracker(tmp_path):
    from conftest import tensorboard_events

    both = ["tracking.trackers=[jsonl, tensorboard]", "training.max_steps=35", "training.eval_every=15",
            "training.checkpoint_every=25"]
    assert run_task(tmp_path, "each", *both)[0] == 0
    assert run_task(tmp_path, "tens", *both, "logging.every=10")[0] == 0
    each, tens = tmp_path / "each", tmp_path / "tens"
    keys = {k for r in task_records(each) if "event" not in r for k in r} - {"step", "time", "train/tokens_per_sec"}
    assert {"train/loss", "train/loss/a", "train/grad_norm", "train/lr", "train/tokens_seen"} <= keys
    for key in sorted(keys):
        assert series(tens, key) == series(each, key), key  # bit for bit, at its own step
    assert [s for s, _ in series(tens, "train/loss")] == list(range(1, 36))
    # Each window's steps share the window's measured rate: 1 alone, 2-10, 11-15 (an evaluation), 16-20, ...
    rates = dict(series(tens, "train/tokens_per_sec"))
    assert rates[2] == rates[10] != rates[11] == rates[15] != rates[16]
    scalars = {name: tensorboard_events(d)[0] for name, d in (("each", each), ("tens", tens))}
    for key in ("train/loss", "train/grad_norm", "train/loss/b"):
        assert scalars["tens"][key] == scalars["each"][key] and len(scalars["tens"][key]) == 35, key


@pytest.mark.parametrize("every, found_at", [(10, 20), (1, 13)])
def test_a_loss_gone_non_finite_between_read_backs_stops_there_and_leaves_last_alone(tmp_path, monkeypatch, every,
                                                                                      found_at):
    import json

    monkeypatch.setenv("TINY_TASK_STOP_AT", f"nan:{12 * 16}")  # step 13's batch
    code, run_dir = run_task(tmp_path, "nan", f"logging.every={every}")
    stop = stop_event(run_dir)
    assert code == 1 and stop["reason"] == "diverged" and stop["step"] == found_at
    assert stop["detail"].startswith("Training diverged at step 13: the loss became nan")
    assert stop["detail"].endswith("(read back at step 20).") == (every == 10)
    loss = series(run_dir, "train/loss")
    assert [s for s, _ in loss] == list(range(1, found_at + 1)) and np.isnan(float(dict(loss)[13]))
    assert all(np.isfinite(float(v)) for s, v in loss if s < 13)
    manifest = json.loads((run_dir / "checkpoints" / "last" / "manifest.json").read_text())
    assert manifest["step"] == 10  # not the diverged weights of step 20
    assert [s for s, _ in series(run_dir, "val/loss")] == [10]  # no evaluation of diverged weights


@pytest.mark.slow  # torch.compile takes ~20 s on 2 CPU cores
def test_compilation_is_reported_apart_from_training(tmp_path):
    code, run_dir = run_task(tmp_path, "compiled", "training.compile=true", "training.max_steps=12", "logging.every=5")
    assert code == 0 and [s for s, _ in series(run_dir, "train/loss")] == list(range(1, 13))
    said = [ln for ln in (run_dir / "train.log").read_text().splitlines() if " took " in ln]
    assert len(said) == 1 and "step 1 took" in said[0] and "(torch.compile compiling, allocations)" in said[0]
    # Step 1 is read back alone: its rate (compilation included) is its own, not the next steps'.
    rates = dict(series(run_dir, "train/tokens_per_sec"))
    assert rates[1] != rates[2] and rates[2] == rates[5]


def test_a_bad_read_back_interval_is_a_config_error():
    from tracked_train.errors import ConfigError

    with pytest.raises(ConfigError, match=r"logging.every=0 is invalid: allowed range is \[1, 1e\+06\]"):
        resolve_task("logging.every=0")
    assert resolve_task().logging.interval("cpu") == 1 and resolve_task().logging.interval("cuda:0") == 10
    assert resolve_task("logging.every=4").logging.interval("cuda") == 4


def test_resuming_with_a_changed_shape_setting_is_refused_before_anything_is_said(tmp_path, capfd):
    from tracked_train.errors import CheckpointError
    from tracked_train.resume import resume

    code, a = run_task(tmp_path, "shape", "training.max_steps=10")
    assert code == 0
    before = (a / "metrics.jsonl").read_bytes()
    capfd.readouterr()
    with pytest.raises(CheckpointError, match=r"\(0.weight is \(8, 4\) in the checkpoint, \(16, 4\) in the model;"):
        resume(str(a), ["task_args.hidden=16", "training.max_steps=20"], allow_config_change=True)
    out, err = capfd.readouterr()
    assert "resuming" not in out + err and "task_args" not in out + err  # no banner, no config table
    assert (a / "metrics.jsonl").read_bytes() == before


# --- task_args -----------------------------------------------------------------------------------------------

def test_a_monitor_no_metric_answers_fails_at_the_first_evaluation(tmp_path):
    from tracked_train.errors import UserError

    with pytest.raises(UserError, match=r"early_stopping.monitor='val/acuracy' is not a metric this task logs "
                                        r"\(val/accuracy, val/loss\)"):
        run_task(tmp_path, "typo", "early_stopping.monitor=val/acuracy", "early_stopping.patience=1")
    stop = [r for r in task_records(tmp_path / "typo") if r.get("event") == "stop"][-1]
    assert stop["reason"] == "failed" and stop["step"] == 10 and "val/acuracy" in stop["detail"]


def test_task_args_defaults_and_overrides():
    flat = resolve_task().flat()
    assert flat["task"] == TINY_TASK
    assert {k: v for k, v in flat.items() if k.startswith("task_args.")} == {
        "task_args.hidden": 8, "task_args.b_weight": 0.5, "task_args.valid_examples": 256}
    assert resolve_task(environ={"TRACKED_TRAIN_TASK_ARGS_HIDDEN": "16"}).task_args["hidden"] == 16
    assert resolve_task(environ={"TRACKED_TRAIN_TASK_ARGS_B_WEIGHT": "2"}).task_args["b_weight"] == 2.0
    both = resolve_task("task_args.hidden=32", environ={"TRACKED_TRAIN_TASK_ARGS_HIDDEN": "16"})
    assert both.task_args["hidden"] == 32  # --set over the environment
    from tracked_train import task

    settings = task.create(both).settings
    assert type(settings).__name__ == "TinySettings" and (settings.hidden, settings.b_weight) == (32, 0.5)


DID_YOU_MEAN = "(did you mean 'task_args.hidden'?)"


@pytest.mark.parametrize("sets, environ, expected", [
    (["task_args.hiden=4"], {}, ("unknown task setting 'task_args.hiden' for task ", DID_YOU_MEAN)),
    ([], {"TRACKED_TRAIN_TASK_ARGS_HIDEN": "4"}, ("'task_args.hiden'", DID_YOU_MEAN)),
    (["task_args.nonsense=1"], {}, ("its settings are hidden, b_weight, valid_examples",)),
    (["task_args.hidden=wide"], {}, ("--set: task_args.hidden='wide' is invalid: expected an integer",)),
    ([], {"TRACKED_TRAIN_TASK_ARGS_HIDDEN": "wide"}, ("environment: task_args.hidden='wide' is invalid",)),
    (["task_args.hidden=99"], {}, ("task_args.hidden=99 is invalid: allowed range is [1, 64]",)),
    (["task_args.b_weight=-1"], {}, ("task_args.b_weight=-1 is invalid: allowed range is [0, 10]",)),
])
def test_bad_task_args_are_one_line_config_errors(sets, environ, expected):
    from tracked_train.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        resolve_task(*sets, environ=environ)
    assert all(x in str(e.value) for x in expected) and "\n" not in str(e.value), str(e.value)


def test_a_one_sided_range_is_a_config_error():
    from tracked_train.errors import ConfigError

    with pytest.raises(ConfigError, match="must be at least 1"):
        resolve_task("task_args.at_least=0", task=task_spec("OddTask"))


def test_a_tuple_of_integers_setting_keeps_its_type():
    from tracked_train.errors import ConfigError

    assert resolve_task("task_args.sizes=[4, 2]", task=task_spec("OddTask")).task_args["sizes"] == (4, 2)
    assert resolve_task(task=task_spec("OddTask")).task_args["sizes"] == (8, 16)  # the default, typed too
    with pytest.raises(ConfigError, match=r"task_args.sizes\[1\]='x' is invalid: expected an integer"):
        resolve_task("task_args.sizes=[4, x]", task=task_spec("OddTask"))


# --- bad tasks -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, expected", [
    ("missing.py:T", "task file 'missing.py' does not exist"),
    ("no_such_module_xyz:T", "module 'no_such_module_xyz' not found"),
    ("TinyTask", "is not a task: write a built-in name (lm), module.path:Class"),
    ("broken.py:Explode", "has no 'Explode' (did you mean 'Explodes'?)"),
    ("broken.py:NotATask", "NotATask is not a tracked_train.Task subclass"),
    ("broken.py:Half", "Half does not implement evaluate"),
])
def test_a_bad_task_spec_is_one_config_error_line(tmp_path, monkeypatch, spec, expected):
    from tracked_train.errors import ConfigError

    (tmp_path / "broken.py").write_text(BROKEN_TASKS)
    monkeypatch.chdir(tmp_path)  # a task file's path is relative to the working folder
    with pytest.raises(ConfigError) as e:
        resolve_task(task=spec)
    assert expected in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_a_task_whose_build_model_fails_exits_2_in_one_line_and_leaves_no_run_folder(tmp_path):
    from conftest import cli

    (tmp_path / "broken.py").write_text(BROKEN_TASKS)
    out = tmp_path / "out"
    r = cli("run", "--output-dir", str(out), "--run-name", "x", "--set", "task=broken.py:Explodes",
            "--set", "tracking.trackers=jsonl", "--set", "training.device=cpu", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "build_model failed: RuntimeError: no such layer: 'attn2'" in errors[0]
    assert r.stderr.rstrip().splitlines()[-1] == errors[0]
    assert not out.exists() or not any(out.iterdir())


# --- sweeps over a task, in this process ----------------------------------------------------------------------

def sweep_cli(tmp_path: Path, *extra: str, trials: int = 1):
    from click.testing import CliRunner

    from tracked_train.cli import main

    (tmp_path / "space.yaml").write_text("task_args.hidden: {choice: [3, 8]}\n")
    args = ["sweep", "--space", str(tmp_path / "space.yaml"), "--storage", f"sqlite:///{tmp_path / 'study.db'}",
            "--study", "s", "--trials", str(trials), "--seed", "0", "--tracker", "jsonl",
            "--output-dir", str(tmp_path / "runs"), "--set", f"task={task_spec('FragileTask')}"]
    for s in [*TASK_BASE, *extra]:
        args += ["--set", s]
    return CliRunner().invoke(main, args)


def test_a_trial_that_fails_in_setup_fails_alone_and_the_study_goes_on(tmp_path):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 'study.db'}")
    for hidden in (3, 8, 3, 8):  # the order the worker runs them in
        study.enqueue_trial({"task_args.hidden": hidden})
    r = sweep_cli(tmp_path, trials=2)
    assert r.exit_code == 0, r.output
    S = optuna.trial.TrialState
    states = [(t.params["task_args.hidden"], t.state) for t in optuna.load_study(
        study_name="s", storage=f"sqlite:///{tmp_path / 'study.db'}").trials]
    assert states == [(3, S.FAIL), (8, S.COMPLETE), (3, S.FAIL), (8, S.COMPLETE)]
    failed = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'study.db'}").trials[0]
    assert "hidden=3 is not buildable" in failed.user_attrs["stop_detail"]
    assert "2 of 2 trials finished (2 complete, 0 pruned), 2 failed" in r.output


def test_a_sweep_checks_what_every_trial_would_before_it_makes_anything(tmp_path):
    # A base config every trial would fail on, an output folder that cannot be made: nothing is created.
    (tmp_path / "a-file").write_text("")
    for extra, sets, message in [
        ((), ["task=lm", "data.source=text", "data.train_files=[nope.txt]"], "data file 'nope.txt' does not exist"),
        (("--output-dir", str(tmp_path / "a-file" / "runs")), [], "is not a writable folder"),
    ]:
        from click.testing import CliRunner

        from tracked_train.cli import main

        (tmp_path / "space.yaml").write_text("training.warmup_steps: {int: [0, 2]}\n")
        args = ["sweep", "--space", str(tmp_path / "space.yaml"), "--storage", f"sqlite:///{tmp_path / 'study.db'}",
                "--study", "s", "--tracker", "jsonl", "--output-dir", str(tmp_path / "runs"), *extra,
                *[a for s in [f"task={TINY_TASK}", *TASK_BASE, *sets] for a in ("--set", s)]]
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 2 and message in r.output and len(r.output.strip().splitlines()) == 1, r.output
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "space.yaml"]

    # Workers of one study must share the base config; trial folders of a lost study are not taken over.
    assert sweep_cli(tmp_path, "task_args.b_weight=1.0").exit_code == 0
    r = sweep_cli(tmp_path, "task_args.b_weight=2.0", trials=2)
    assert r.exit_code == 2, r.output
    assert ("started from another base config (task_args.b_weight=1.0 there, 2.0 here)" in r.output
            and len(r.output.strip().splitlines()) == 1), r.output
    assert sweep_cli(tmp_path, "task_args.b_weight=1.0", trials=2).exit_code == 0  # the same base: it goes on
    (tmp_path / "study.db").unlink()
    r = sweep_cli(tmp_path, "task_args.b_weight=1.0")
    assert r.exit_code == 2 and "holds trial folders of an earlier study named 's' (s-t000, s-t001)" in r.output, \
        r.output
    assert not (tmp_path / "study.db").exists()
