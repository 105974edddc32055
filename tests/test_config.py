"""Config precedence, typing and the one-line errors bad input gets."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import cli, records, sets, tracker_keys

from tracked_train import config
from tracked_train.cli import main
from tracked_train.errors import ConfigError


def resolve(*sets, yaml_file=None, environ=None, cli=None):
    return config.resolve(yaml_file, list(sets), cli, environ=environ or {})


def test_defaults_and_types():
    cfg = resolve("training.lr=3e-4", "training.max_steps=7", "data.train_files=a.txt,b.txt")
    assert cfg.training.lr == pytest.approx(3e-4) and isinstance(cfg.training.lr, float)
    assert cfg.training.max_steps == 7
    assert cfg.data.train_files == ("a.txt", "b.txt")
    assert resolve("data.train_files=[x, y]").data.train_files == ("x", "y")
    assert resolve("data.train_files=only.txt").data.train_files == ("only.txt",)


def test_empty_value_clears_optional_key():
    assert config.Config().training.grad_clip == 1.0
    assert resolve("training.grad_clip=").training.grad_clip is None


def test_precedence_cli_over_env_over_yaml_over_defaults(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("training:\n  lr: 0.01\n  max_steps: 11\n  batch_size: 3\n")
    env = {"TRACKED_TRAIN_TRAINING_LR": "0.02", "TRACKED_TRAIN_TRAINING_MAX_STEPS": "12"}
    cfg = resolve("training.lr=0.03", yaml_file=y, environ=env)
    assert cfg.training.lr == 0.03  # --set beats env
    assert cfg.training.max_steps == 12  # env beats YAML
    assert cfg.training.batch_size == 3  # YAML beats default
    assert cfg.training.warmup_steps == config.Config().training.warmup_steps


def test_env_reaches_every_section_and_key_with_underscores():
    env = {"TRACKED_TRAIN_EARLY_STOPPING_PATIENCE": "3", "TRACKED_TRAIN_EARLY_STOPPING_MIN_DELTA": "0.5",
           "TRACKED_TRAIN_TRACKING_WANDB_PROJECT": "p", "TRACKED_TRAIN_MODEL_N_KV_HEADS": "2"}
    cfg = resolve(environ=env)
    assert (cfg.early_stopping.patience, cfg.early_stopping.min_delta) == (3, 0.5)
    assert (cfg.tracker_args["wandb"]["project"], cfg.model.n_kv_heads) == ("p", 2)
    assert resolve("early_stopping.patience=5", environ=env).early_stopping.patience == 5  # --set still wins


@pytest.mark.parametrize("name, message", [
    ("TRACKED_TRAIN_EARLY_STOPING_PATIENCE",
     "unknown environment variable TRACKED_TRAIN_EARLY_STOPING_PATIENCE "
     "(did you mean TRACKED_TRAIN_EARLY_STOPPING_PATIENCE, for early_stopping.patience?)"),
    ("TRACKED_TRAIN_TRAINING_LRR", "(did you mean TRACKED_TRAIN_TRAINING_LR, for training.lr?)"),
    ("TRACKED_TRAIN_CACH", "(did you mean TRACKED_TRAIN_CACHE?)"),
    ("TRACKED_TRAIN_XYZZY", "TRACKED_TRAIN_<SECTION>_<KEY> sets a config key, e.g. TRACKED_TRAIN_TRAINING_LR"),
])
def test_unknown_env_variable_is_an_error(name, message):
    with pytest.raises(ConfigError) as e:
        resolve(environ={name: "1"})
    assert message in str(e.value)


def test_variables_the_package_reads_are_not_config_errors():
    """Each TRACKED_TRAIN_* name in the package is a config key's or in NOT_CONFIG_ENV, else `run` refuses it."""
    package = Path(config.__file__).parent
    named = {m for f in package.rglob("*.py") for m in re.findall(r"TRACKED_TRAIN_[A-Z][A-Z0-9_]*", f.read_text())}
    named = {m for m in named if not m.endswith("_")}  # a pattern in a docstring (TRACKED_TRAIN_TRACKING_<NAME>...)
    config_vars = {config.env_name(k) for k in [*config.FIELDS, *tracker_keys()]}
    assert "TRACKED_TRAIN_CACHE" in named and named - config_vars <= config.NOT_CONFIG_ENV, named - config_vars
    assert resolve(environ=dict.fromkeys(config.NOT_CONFIG_ENV, "1")) == resolve(environ={})


def test_mlflow_experiment_name_only_when_nothing_else_names_it(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("tracking:\n  experiment: from-yaml\n")
    mlflow_env = {"MLFLOW_EXPERIMENT_NAME": "from-mlflow"}
    assert resolve(environ={}).tracking.experiment == "tracked-train"
    assert resolve(environ=mlflow_env).tracking.experiment == "from-mlflow"
    assert resolve(yaml_file=y, environ=mlflow_env).tracking.experiment == "from-yaml"
    ours = {**mlflow_env, "TRACKED_TRAIN_TRACKING_EXPERIMENT": "from-ours"}
    assert resolve(environ=ours).tracking.experiment == "from-ours"
    assert resolve("tracking.experiment=from-set", environ=mlflow_env).tracking.experiment == "from-set"


@pytest.mark.parametrize("assignment, message", [
    ("trainng.lr=1", "unknown config key 'trainng.lr' (did you mean 'training.lr'?)"),
    ("training.max_steps=ten", "training.max_steps='ten' is invalid: expected an integer"),
    ("training.lr=-1", "training.lr=-1 is invalid: allowed range is (0, 10]"),
    ("model.dropout=2", "model.dropout=2 is invalid: allowed range is [0, 0.9]"),
    ("training.precision=fp8", "expected one of 'auto', 'fp32', 'bf16', 'fp16'"),
    ("training.compile=maybe", "expected true or false"),
    ("model.n_heads=3", "model.d_model=256 must be divisible by model.n_heads=3"),
    # Values that passed validation and then crashed mid-run (issue 25).
    ("model.d_model=72", "heads of 9 features; rotary positions need an even head size"),
    ("training.seed=-5", "training.seed=-5 is invalid: allowed range is [0, 9223372036854775807]"),
    (f"training.seed={2**64}", "is invalid: allowed range is [0, 9223372036854775807]"),
])
def test_bad_values_name_the_problem(assignment, message):
    with pytest.raises(ConfigError) as e:
        resolve(assignment)
    assert message in str(e.value)


def test_malformed_yaml_names_its_line(tmp_path):
    y = tmp_path / "bad.yaml"
    y.write_text("training:\n  lr: 0.1\n  max_steps: [1, 2\n")
    with pytest.raises(ConfigError) as e:
        resolve(yaml_file=y)
    assert "bad.yaml" in str(e.value) and "line 4" in str(e.value)


def test_config_roundtrip():
    cfg = resolve("training.lr=0.002", "data.valid_files=v.txt")
    assert config.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("args, needle", [
    (["--set", "trainng.lr=1"], "did you mean 'training.lr'?"),
    (["--set", "training.batch_size=1.5"], "expected an integer"),
    (["--set", "training.warmup_steps=-3"], "allowed range is [0,"),
    (["--config", "BAD_YAML"], "malformed YAML"),
    (["--config", "missing.yaml"], "does not exist"),
    (["--set", "data.source=text", "--set", "data.train_files=nope.txt"], "data file 'nope.txt' does not exist"),
    (["--tracker", "mlfow"], "unknown tracker 'mlfow'"),
    # The variables the package reads that are not config keys (issue 25): checked before anything is made.
    (["ENV", "TRACKED_TRAIN_MLFLOW_FLUSH_TIMEOUT=abc"], "TRACKED_TRAIN_MLFLOW_FLUSH_TIMEOUT='abc' is invalid"),
    (["ENV", "TRACKED_TRAIN_MLFLOW_SEND_INTERVAL_S=0"], "expected a number of seconds over 0"),
    (["ENV", "TRACKED_TRAIN_WEBHOOK_FLUSH_TIMEOUT=nan"], "TRACKED_TRAIN_WEBHOOK_FLUSH_TIMEOUT='nan' is invalid"),
    (["ENV", "TRACKED_TRAIN_CACHE=/proc/nope"], "TRACKED_TRAIN_CACHE='/proc/nope' is not a folder"),
])
def test_cli_bad_input_exit_2_one_line_no_run_folder(tmp_path, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    if args[0] == "ENV":
        name, _, value = args[1].partition("=")
        monkeypatch.setenv(name, value)
        args = []
    (tmp_path / "BAD_YAML").write_text("training: {lr: 0.1\n")
    result = CliRunner().invoke(main, ["run", "--output-dir", "out", *args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_misspelt_env_variable_exits_2_with_a_suggestion(tmp_path):
    r = cli("run", "--set", "tracking.trackers=jsonl", cwd=tmp_path, env={"TRACKED_TRAIN_TRAINNG_MAX_STEPS": "5"})
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == ("error: unknown environment variable TRACKED_TRAIN_TRAINNG_MAX_STEPS "
                                "(did you mean TRACKED_TRAIN_TRAINING_MAX_STEPS, for training.max_steps?)")
    assert list(tmp_path.iterdir()) == []


def test_env_patience_stops_a_run(tmp_path):
    """The variable reaches the loop: no eval beats the best by 100, so the second one stops the run."""
    r = cli("run", "--run-name", "p", *sets("training.max_steps=12", "training.eval_every=2",
                                            "early_stopping.min_delta=100"),
            cwd=tmp_path, env={"TRACKED_TRAIN_EARLY_STOPPING_PATIENCE": "1"})
    assert r.returncode == 0, r.stderr
    stop = next(x for x in records(tmp_path / "runs" / "p") if x.get("event") == "stop")
    assert (stop["reason"], stop["step"]) == ("patience", 4)


def test_empty_data_file_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.txt").write_text("")
    result = CliRunner().invoke(main, ["run", "--output-dir", "out", "--set", "data.source=text",
                                       "--set", "data.train_files=empty.txt"])
    assert result.exit_code == 2
    assert "data file 'empty.txt' is empty" in result.output
    assert not (tmp_path / "out").exists()

