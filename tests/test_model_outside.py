"""The trained model outside the run: the Python API, the MLflow Logged Model that serves, the HF export.

One tiny run tracked on the session's real `mlflow server`; everything is read
back as a user would: `mlflow.pyfunc`, `mlflow models serve` over HTTP,
`transformers.AutoModelForCausalLM`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import SIDE_BY_SIDE, cli, free_port, records, sets, wait_until

import tracked_train

pytestmark = pytest.mark.slow  # real processes and servers: `pytest -m "not slow"` leaves it out

REGISTERED = "tiny-shakespeare-ish"


@pytest.fixture(scope="module")
def tracked(mlflow_server, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("outside")
    r = cli("run", "--run-name", "out", *sets(
        "tracking.trackers=[jsonl, mlflow]", f"tracking.mlflow.uri={mlflow_server.uri}", "tracking.experiment=outside",
        f"tracking.mlflow.register_model={REGISTERED}", "training.max_steps=20", "training.eval_every=10"), cwd=cwd)
    assert r.returncode == 0, r.stderr
    run_dir = cwd / "runs" / "out"
    run_id = json.loads((run_dir / "mlflow" / "state.json").read_text())["run_id"]
    client = mlflow_server.client()
    run = client.get_run(run_id)
    models = client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'")
    assert len(models) == 1, models
    return run_dir, run, models[0]


@pytest.fixture
def server_env(mlflow_server, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    mlflow.set_tracking_uri(mlflow_server.uri)


def test_logged_model_with_best_metrics_registered_no_pickle(mlflow_server, tracked, server_env, tmp_path):
    import mlflow

    run_dir, run, model = tracked
    client = mlflow_server.client()
    assert str(model.status.value) == "READY" and model.name == "model"
    assert [o.model_id for o in run.outputs.model_outputs] == [model.model_id]
    metrics = {m.key: m for m in model.metrics}
    stop = next(r for r in records(run_dir) if r.get("event") == "stop")
    assert metrics["best/val_loss"].value == pytest.approx(stop["best_val_loss"])
    assert metrics["best/step"].value == stop["best_step"] == metrics["best/val_loss"].step
    assert metrics["best/val_nats_per_char"].value == pytest.approx(stop["best_val_nats_per_char"])
    assert metrics["best/val_bpb"].value == pytest.approx(stop["best_val_bpb"])
    # The best value is a run metric too: runs can be filtered and ordered by it.
    threshold = stop["best_val_loss"] + 1e-3
    found = client.search_runs([run.info.experiment_id], f"metrics.`best/val_loss` < {threshold}")
    assert [r.info.run_id for r in found] == [run.info.run_id]
    assert not client.search_runs([run.info.experiment_id], f"metrics.`best/val_loss` < {threshold - 2e-3}")

    versions = client.search_model_versions(f"name = '{REGISTERED}'")
    assert [(v.run_id, v.source) for v in versions] == [(run.info.run_id, f"models:/{model.model_id}")]

    local = Path(mlflow.artifacts.download_artifacts(f"models:/{model.model_id}", dst_path=str(tmp_path)))
    files = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
    assert {"artifacts/files/model.safetensors", "artifacts/files/config.json", "artifacts/files/tokenizer.model",
            "code/tracked_train/inference.py", "code/tracked_train/model.py", "MLmodel"} <= files
    assert not [f for f in files if f.endswith((".pkl", ".pth", ".pt", ".pickle"))], files
    requirements = (local / "requirements.txt").read_text().split()
    assert not [r for r in requirements if "tracked" in r or "+" in r], requirements
    assert {"torch", "safetensors", "sentencepiece"} <= {r.split("==")[0] for r in requirements}
    # The run's own artifacts keep the full checkpoints; the old pickled model/ folder is gone.
    run_files = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "checkpoints" in run_files and "model" not in run_files


def test_pyfunc_predicts_text(tracked, server_env):
    import mlflow.pyfunc
    import pandas as pd

    _, _, model = tracked
    loaded = mlflow.pyfunc.load_model(f"models:/{model.model_id}")
    params = {"max_new_tokens": 16, "seed": 3}
    texts = loaded.predict(pd.DataFrame({"prompt": ["Ada", "The "]}), params=params)
    assert len(texts) == 2 and texts[0].startswith("Ada") and texts[1].startswith("The ")
    assert all(len(t) > len(p) for t, p in zip(texts, ["Ada", "The "]))
    assert loaded.predict(["Ada"], params=params) == texts[:1]  # a list works; a prompt's text ignores its batch
    greedy = loaded.predict(["Ada"], params={"max_new_tokens": 16, "temperature": 0.0, "seed": 1})
    assert greedy == loaded.predict(["Ada"], params={"max_new_tokens": 16, "temperature": 0.0, "seed": 2})
    assert {p.name for p in loaded.metadata.signature.params} == {"max_new_tokens", "temperature", "top_k", "seed"}


def test_served_model_imports_the_code_it_ships(tracked, mlflow_server, tmp_path):
    _, _, model = tracked
    # A fresh process: loading the model puts its code/ first on sys.path, before the installed package.
    probe = (f"import mlflow.pyfunc; m = mlflow.pyfunc.load_model('models:/{model.model_id}'); "
             "print(m.predict(['Ada'], params={'max_new_tokens': 4})[0].startswith('Ada')); "
             "import tracked_train.inference as i; print(i.__file__)")
    r = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.uri})
    assert r.returncode == 0, r.stderr
    ok, where = r.stdout.split()[-2:]
    assert ok == "True"
    assert Path(where).parts[-3:] == ("code", "tracked_train", "inference.py"), where
    assert Path(tracked_train.__file__).parent not in Path(where).parents


def test_mlflow_models_serve_answers(tracked, mlflow_server, tmp_path):
    _, _, model = tracked
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.uri}
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{model.model_id}", "--env-manager",
         "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "serve.log", "w"),
        start_new_session=True)
    try:
        def ping() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as resp:
                    return resp.status == 200
            except OSError:
                return False

        wait_until(ping, "mlflow models serve to answer /ping", deadline_s=240, proc=proc)
        body = {"dataframe_split": {"columns": ["prompt"], "data": [["ROMEO:"]]}, "params": {"max_new_tokens": 20}}
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as resp:
            answer = json.loads(resp.read())
        print(f"mlflow models serve: first answer {time.monotonic() - t0:.1f} s after start")
        (text,) = answer["predictions"]
        assert text.startswith("ROMEO:") and len(text) > len("ROMEO:")

        # A bad parameter is the client's mistake: a 400 saying which, not a 500.
        body["params"] = {"max_new_tokens": 4, "top_k": -1}
        req = urllib.request.Request(req.full_url, json.dumps(body).encode(), {"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=120)
        assert refused.value.code == 400
        error = json.loads(refused.value.read())
        assert error["error_code"] == "INVALID_PARAMETER_VALUE" and "top_k must be" in error["message"], error
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


def test_dataset_inputs(tracked):
    run_dir, run, _ = tracked
    logged = next(r for r in records(run_dir) if r.get("event") == "datasets")["datasets"]
    by_context = {next(t.value for t in d.tags if t.key == "mlflow.data.context"): d.dataset
                  for d in run.inputs.dataset_inputs}
    assert set(by_context) == {"training", "validation"}
    for d in logged:
        ds = by_context[d["context"]]
        assert len(d["digest"]) == 64 and ds.digest == d["digest"][:32]
        assert json.loads(ds.profile)["sha256"] == d["digest"] and ds.name == "builtin"
    assert logged[0]["digest"] != logged[1]["digest"]


def test_python_api_from_folder_and_server(tracked, server_env):
    import torch

    run_dir, run, _ = tracked
    model, tok = tracked_train.load(run_dir)
    assert not model.training and tok.decode(tok.encode("Ada\nBo")) == "Ada\nBo"
    remote, _ = tracked_train.load(f"mlflow:{run.info.run_id}")
    ids = torch.tensor([tok.encode("Ada lovelace")])
    with torch.no_grad():
        assert torch.equal(model(ids)[0], remote(ids)[0])  # the same best checkpoint

    text = tracked_train.generate(run_dir, "Ada", max_new_tokens=12, seed=5)
    assert text.startswith("Ada") and len(text) > 3
    assert text == tracked_train.generate(f"runs:/{run.info.run_id}", "Ada", max_new_tokens=12, seed=5)

    local, server = tracked_train.history(run_dir), tracked_train.history(f"mlflow:{run.info.run_id}")
    assert list(local["step"]) == list(range(1, 21))
    row = local[local["step"] == 10].iloc[0]
    assert row["train/loss"] > 0 and row["val/loss"] > 0  # train and val of a step share a row
    assert local["val/loss"].notna().sum() == 2
    assert list(server["train/loss"]) == list(local["train/loss"])


def test_cli_generate_matches_the_api(tracked):
    run_dir, _, _ = tracked
    r = cli("generate", str(run_dir), "--prompt", "Ada", "--max-new-tokens", "12", "--seed", "5", cwd=run_dir.parent)
    assert r.returncode == 0, r.stderr
    assert r.stdout.rstrip("\n") == tracked_train.generate(run_dir, "Ada", max_new_tokens=12, seed=5)


# Each bad sampling argument once (named as the Python API names it), and the one-line refusal it gets.
BAD_SAMPLING = [("temperature", float("nan")), ("temperature", float("inf")), ("temperature", -0.5),
                ("top_k", -1), ("max_new_tokens", -1), ("seed", -1), ("seed", 2**63)]


def test_bad_sampling_arguments_refused_in_one_line_everywhere(tracked, server_env):
    """A NaN, infinite or negative temperature, a negative top-k or length, a seed outside 0..2**63-1: ValueError
    from the Python API, INVALID_PARAMETER_VALUE (HTTP 400) from the MLflow model, one line and exit 2 from
    `generate`; never a traceback from deep inside torch."""
    import mlflow.pyfunc
    from click.testing import CliRunner
    from mlflow.exceptions import MlflowException

    from tracked_train.cli import main
    from tracked_train.inference import complete

    run_dir, _, logged = tracked
    model, tok = tracked_train.load(run_dir)
    served = mlflow.pyfunc.load_model(f"models:/{logged.model_id}")
    for name, value in BAD_SAMPLING:
        with pytest.raises(ValueError, match=f"^{name} must be .*, not {value!r}$"):
            tracked_train.generate(run_dir, "Ada", **{name: value})
        with pytest.raises(ValueError, match=f"^{name} must be"):
            complete(model, tok, ["Ada"], **{name: value})
        with pytest.raises(MlflowException, match=f"{name} must be") as refused:  # 2**63: MLflow's own check
            served.predict(["Ada"], params={"max_new_tokens": 2, name: value})
        assert refused.value.get_http_status_code() == 400, refused.value
        option = "--" + name.replace("_", "-")
        r = CliRunner().invoke(main, ["generate", str(run_dir), "--prompt", "Ada", option, str(value)])
        lines = r.output.strip().splitlines()
        assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {option} must be"), r.output

    with pytest.raises(ValueError, match=r"list of strings"):
        complete(model, tok, "Ada")  # a lone string, not sampled letter by letter
    # The edges are accepted: nothing to add, and a temperature so small that float32 logits would overflow.
    assert complete(model, tok, ["Ada"], max_new_tokens=0, seed=2**63 - 1) == ["Ada"]
    greedy = complete(model, tok, ["Ada"], max_new_tokens=8, temperature=0)
    assert complete(model, tok, ["Ada"], max_new_tokens=8, temperature=1e-300, top_k=None) == greedy


def test_hf_and_safetensors_exports_and_refusals(tracked, tmp_path):
    """Both formats and the refused exports, as five `export` processes started at once (two cores: most of a
    command's time is its start-up). Merged from test_hf_export_logits_match and
    test_safetensors_export_and_refusals."""
    import torch
    from transformers import AutoModelForCausalLM

    from tracked_train.inference import load_files

    run_dir, _, _ = tracked
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    commands = {"hf": [str(run_dir), "--format", "hf", "--out", str(tmp_path / "hf")],
                "safetensors": [str(run_dir), "--format", "safetensors", "--out", str(tmp_path / "st")],
                "taken": [str(run_dir), "--out", str(tmp_path / "taken")],
                "onnx": [str(run_dir), "--out", str(tmp_path / "x"), "--format", "onnx"],
                "nowhere": [str(tmp_path / "nowhere"), "--out", str(tmp_path / "y")]}
    procs = {name: subprocess.Popen([sys.executable, "-m", "tracked_train", "export", *args], cwd=tmp_path,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    env={**os.environ, **SIDE_BY_SIDE})
             for name, args in commands.items()}
    done = {name: (p.communicate(timeout=300), p.returncode) for name, p in procs.items()}
    r = {name: subprocess.CompletedProcess(commands[name], code, out, err) for name, ((out, err), code) in done.items()}

    # --format hf: a model transformers loads (StableLM for this design), with our logits.
    assert r["hf"].returncode == 0, r["hf"].stderr
    ours, tok = tracked_train.load(run_dir)
    assert ours.config.n_kv_heads < ours.config.n_heads  # grouped-query attention is mapped too
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert theirs.config.model_type == "stablelm" and (tmp_path / "hf" / "tokenizer.model").is_file()
    ids = torch.randint(0, ours.config.vocab_size, (2, ours.config.seq_len), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (ours(ids)[0] - theirs(ids).logits).abs().max().item()
    assert diff <= 1e-4, diff

    # --format safetensors: our own loader gives the same model.
    assert r["safetensors"].returncode == 0, r["safetensors"].stderr
    model, tok = load_files(tmp_path / "st")
    ids = torch.tensor([tok.encode("Ada")])
    with torch.no_grad():
        assert torch.equal(model(ids)[0], ours(ids)[0])

    # Refusals: an occupied folder, an unknown format, no run there.
    for name in ("taken", "onnx"):
        assert r[name].returncode == 2 and "Traceback" not in r[name].stderr, r[name].stderr
    assert r["nowhere"].returncode == 2 and len(r["nowhere"].stderr.strip().splitlines()) == 1, r["nowhere"].stderr
    assert os.listdir(tmp_path / "taken") == ["keep.txt"] and not (tmp_path / "y").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no half-written export left
