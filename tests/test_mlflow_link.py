"""At the start of a run with MLflow: one line with the link to the run in the UI's model-training view."""

from __future__ import annotations

import json
import re

import pytest
from conftest import cli, sets

from tracked_train.mlflow.tracker import ui_link

pytestmark = pytest.mark.slow  # real processes and servers: `pytest -m "not slow"` leaves it out

SECRET = "canary-l1nk-5513"
LINK = re.compile(r"mlflow: view it at (\S+)")


def test_link_of_a_run_on_a_real_server_names_the_run_and_no_password(mlflow_server, tmp_path):
    uri_with_password = mlflow_server.uri.replace("http://", f"http://alice:{SECRET}@")
    r = cli("run", "--run-name", "linked", *sets(
        "tracking.trackers=[jsonl, mlflow]", f"tracking.mlflow.uri={uri_with_password}",
        "tracking.experiment=link-tests", "training.max_steps=5", "training.eval_every=5"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    links = LINK.findall(r.stderr)
    assert len(links) == 1, r.stderr
    run_id = json.loads((tmp_path / "runs" / "linked" / "mlflow" / "state.json").read_text())["run_id"]
    experiment = mlflow_server.client().get_experiment_by_name("link-tests")
    # The form the browser test opens (tests/test_mlflow_ui.py), down to the run.
    assert links[0] == (f"{mlflow_server.uri}/#/experiments/{experiment.experiment_id}/runs/{run_id}"
                        "?workflowType=machine_learning")
    assert mlflow_server.client().get_run(run_id).info.run_name == "linked"
    assert SECRET not in r.stderr and SECRET not in (tmp_path / "runs" / "linked" / "train.log").read_text()


def test_link_drops_credentials_and_the_query():
    assert ui_link("https://bob:pw@mlflow.example:8443/prefix/?token=t", "7", "abc") == (
        "https://mlflow.example:8443/prefix/#/experiments/7/runs/abc?workflowType=machine_learning")


def test_no_link_without_an_http_server(tmp_path):
    r = cli("run", "--run-name", "local", *sets(
        "tracking.trackers=[jsonl, mlflow]", f"tracking.mlflow.uri=sqlite:///{tmp_path / 'm.db'}",
        "training.max_steps=2", "training.eval_every=2"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "mlflow: run " in r.stderr and not LINK.search(r.stderr)
