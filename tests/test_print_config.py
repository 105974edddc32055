"""`tracked-train run --print-config`: the resolved config, secrets redacted, nothing made; `--help` names trackers."""

from __future__ import annotations

import yaml
from conftest import cli

from tracked_train.trackers import available


def test_print_config_shows_values_not_secrets_and_creates_nothing(tmp_path):
    r = cli("run", "--print-config", "--set", "training.lr=3e-4", "--tracker", "tensorboard",
            "--set", "tracking.mlflow.uri=http://user:hunter2@mlflow.example:5000",
            "--set", "tracking.webhook.url=https://hooks.example/T0/hunter3",
            cwd=tmp_path, env={"TRACKED_TRAIN_TRAINING_MAX_STEPS": "77"})
    assert r.returncode == 0, r.stderr
    printed = yaml.safe_load(r.stdout)
    assert printed["training"]["lr"] == 3e-4 and printed["training"]["max_steps"] == 77
    assert printed["tracking"]["trackers"] == ["tensorboard"]
    assert printed["tracking"]["mlflow"]["uri"] == "http://mlflow.example:5000"
    assert printed["tracking"]["webhook"]["url"] == "***"
    assert "hunter" not in r.stdout + r.stderr
    assert list(tmp_path.iterdir()) == []  # no run folder, no mlflow.db, no mlruns/


def test_mlflow_experiment_name_in_the_printed_config_unless_set(tmp_path):
    env = {"MLFLOW_EXPERIMENT_NAME": "from-mlflow"}
    r = cli("run", "--print-config", cwd=tmp_path, env=env)
    assert yaml.safe_load(r.stdout)["tracking"]["experiment"] == "from-mlflow", r.stderr
    r = cli("run", "--print-config", "--set", "tracking.experiment=mine", cwd=tmp_path, env=env)
    assert yaml.safe_load(r.stdout)["tracking"]["experiment"] == "mine", r.stderr


def test_run_help_names_the_trackers(tmp_path):
    r = cli("run", "--help", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    names = "".join(r.stdout.split()).split("Available:")[1].split(".")[0]  # the help wraps lines
    assert names.split(",") == available() and "tensorboard" in names


def test_print_config_masks_credentials_in_query_strings(tmp_path):
    r = cli("run", "--print-config", "--set", "tracking.mlflow.uri=postgresql://mlflow.example/db?password=hunter4",
            "--set", "tracking.webhook.url=https://hooks.example/hook?token=hunter5", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    printed = yaml.safe_load(r.stdout)["tracking"]
    assert printed["mlflow"]["uri"] == "postgresql://mlflow.example/db?password=***"
    assert printed["webhook"]["url"] == "***"
    assert "hunter" not in r.stdout + r.stderr
    assert list(tmp_path.iterdir()) == []
