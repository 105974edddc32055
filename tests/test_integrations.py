"""The Hugging Face Trainer callback and the Lightning logger (tracked_train.integrations), with the real libraries
and a real MLflow server.

docs/your-loop.md's two scripts run as written, failing mid-run (an exception right after a given step is
logged), then run again, which resumes the framework from its checkpoint: one MLflow run, FAILED, then continued to
the early-stopping reason, each step once and equal to ``metrics.jsonl``. The Lightning script runs in real
processes; the HF script in this process (a new Trainer each time: importing transformers twice more would double
the file's time). Also in this process: a SIGTERM during an HF Trainer's training, a Lightning stopping threshold,
and bad input.
"""

from __future__ import annotations

import os
import re
import runpy
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import records

pytestmark = pytest.mark.slow  # real processes and servers: `pytest -m "not slow"` leaves it out

DOC = Path(__file__).resolve().parents[1] / "docs" / "your-loop.md"
EXPERIMENT = "integrations"
HOOK = '''
import os, runpy, sys
import tracked_train.your_loop as y
at, key = int(os.environ["HOOK_AT"]), os.environ["HOOK_KEY"]
log = y.Run.log
def hooked(self, metrics, step):
    log(self, metrics, step)
    if step == at and key in metrics:
        raise ValueError("boom: cannot reach https://bob:hunter2@db.example/x")
y.Run.log = hooked
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
'''


def doc_script(heading: str) -> str:
    """The first python block of the docs' section ``heading``."""
    section = DOC.read_text().split(f"\n## {heading}\n", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def scripts(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("integrations")
    (tmp / "train_hf.py").write_text(doc_script("The Hugging Face Trainer"))
    (tmp / "train_lightning.py").write_text(doc_script("PyTorch Lightning"))
    (tmp / "hook.py").write_text(HOOK)
    return tmp


def python(tmp: Path, script: str, arg: str, uri: str, fail_at: tuple[str, int] | None = None):
    hook = [str(tmp / "hook.py")] if fail_at else []
    extra = {"HOOK_KEY": fail_at[0], "HOOK_AT": str(fail_at[1])} if fail_at else {}
    return subprocess.run([sys.executable, *hook, str(tmp / script), arg], cwd=tmp, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "MLFLOW_TRACKING_URI": uri,
                                            "TRACKED_TRAIN_TRACKING_EXPERIMENT": EXPERIMENT, **extra})


def mlflow_run(client, name: str):
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id],
                              filter_string=f"attributes.run_name = '{name}'")
    assert len(runs) == 1, [r.info.run_id for r in runs]  # one MLflow run, however often the script ran
    return runs[0]


def history(client, run, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))


def jsonl(run_dir: Path, key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in records(run_dir) if key in r and "event" not in r]


def last_stop(run_dir: Path) -> dict:
    return [r for r in records(run_dir) if r.get("event") == "stop"][-1]


def failed_first(client, name: str, step: int):
    """The script's MLflow run after its first attempt, which the hook's exception failed at ``step``."""
    first = mlflow_run(client, name)
    assert first.info.status == "FAILED" and first.data.tags["stop_reason"] == "failed"
    assert first.data.tags["stop_detail"] == (
        f"Failed at step {step}: ValueError: boom: cannot reach https://***@db.example/x")
    return first


def continued_to_patience(client, name: str, first, detail: str) -> tuple[object, int]:
    """The same MLflow run as ``first``, continued and stopped by patience with a stop_detail matching ``detail``
    (its group 1: the step); (run, that step)."""
    run = mlflow_run(client, name)
    assert run.info.run_id == first.info.run_id
    assert run.info.status == "FINISHED" and run.data.tags["stop_reason"] == "patience"
    stopped = re.fullmatch(detail, run.data.tags["stop_detail"])
    assert stopped, run.data.tags["stop_detail"]
    return run, int(stopped.group(1))


def each_step_once(client, run, run_dir: Path, key: str, steps: range) -> None:
    """``key`` is in metrics.jsonl at ``steps``, each once (resumed steps logged again replace the failed
    attempt's), and the server holds exactly what metrics.jsonl holds."""
    points = jsonl(run_dir, key)
    assert [s for s, _ in points] == list(steps), key
    assert history(client, run, key) == points, key


def fail_at(key: str, at: int):
    """Run.log that raises right after logging ``key`` at step ``at``: an exception inside training."""
    from tracked_train.your_loop import Run

    log = Run.log

    def hooked(self, metrics, step):
        log(self, metrics, step)
        if step == at and key in metrics:
            raise ValueError("boom: cannot reach https://bob:hunter2@db.example/x")
    return hooked


def test_hf_trainer_failed_then_resumed_is_one_mlflow_run_stopped_by_patience_each_step_once(scripts, mlflow_server,
                                                                                           monkeypatch, capfd):
    # In this process (transformers is imported here anyway): the script as written, twice, each time a new Trainer.
    from tracked_train.your_loop import Run

    monkeypatch.chdir(scripts)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    monkeypatch.setenv("TRACKED_TRAIN_TRACKING_EXPERIMENT", EXPERIMENT)
    monkeypatch.setattr(sys, "argv", ["train_hf.py", "hf"])
    client, run_dir = mlflow_server.client(), scripts / "runs" / "hf"
    with monkeypatch.context() as m, pytest.raises(ValueError, match="boom"):  # it goes on up to the script
        m.setattr(Run, "log", fail_at("train/loss", 8))
        runpy.run_path(str(scripts / "train_hf.py"), run_name="__main__")
    first = failed_first(client, "hf", 8)
    assert (scripts / "hf-checkpoints" / "hf" / "checkpoint-5").is_dir()

    capfd.readouterr()
    runpy.run_path(str(scripts / "train_hf.py"), run_name="__main__")  # resumes the Trainer from checkpoint-5
    assert "continuing from the checkpoint of step 5" in capfd.readouterr().err
    run, end = continued_to_patience(client, "hf", first, r"Stopped at step (\d+) of 80 by EarlyStoppingCallback: "
                                     r"val/loss did not improve on its best, [\d.]+ at step \d+\.")
    assert 15 <= end < 80 and end % 5 == 0  # patience 2: the third evaluation at the earliest
    stop = last_stop(run_dir)
    assert (stop["reason"], stop["step"]) == ("patience", end)

    each_step_once(client, run, run_dir, "train/loss", range(1, end + 1))  # steps 6-8 logged again, once
    each_step_once(client, run, run_dir, "val/loss", range(5, end + 1, 5))
    assert [s for s, _ in history(client, run, "train/lr")] == list(range(1, end + 1))
    params = run.data.params
    assert (params["learning_rate"], params["max_steps"], params["model.n_embd"]) == ("0.01", "80", "32")
    assert {a.path for a in client.list_artifacts(run.info.run_id, "hf_checkpoint")} == {
        "hf_checkpoint/best", "hf_checkpoint/last"}
    best = {a.path.rsplit("/", 1)[1] for a in client.list_artifacts(run.info.run_id, "hf_checkpoint/best")}
    assert {"model.safetensors", "trainer_state.json"} <= best
    assert {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")} == {
        "checkpoints/best", "checkpoints/last"}


def test_lightning_fit_failed_then_resumed_is_one_mlflow_run_stopped_by_patience_each_step_once(scripts,
                                                                                             mlflow_server):
    client, run_dir = mlflow_server.client(), scripts / "runs" / "pl"
    r = python(scripts, "train_lightning.py", "runs/pl", mlflow_server.uri, fail_at=("train_loss", 9))
    assert r.returncode == 1 and "ValueError: boom" in r.stderr
    first = failed_first(client, "pl", 9)
    assert (run_dir / "lightning" / "checkpoints" / "last.ckpt").is_file()

    r = python(scripts, "train_lightning.py", "runs/pl", mlflow_server.uri)  # ckpt_path="last"
    assert r.returncode == 0, r.stderr
    assert "continuing from the checkpoint of step 3" in r.stderr  # the end of epoch 0 (steps 0-3)
    run, end = continued_to_patience(client, "pl", first, r"Stopped at step (\d+) \(epoch \d+\) by EarlyStopping: "
                                     r"Monitored metric val_loss did not improve in the last 2 records\. "
                                     r"Best score: [\d.]+\.")
    assert end < 30 * 4 - 1 and end % 4 == 3  # before max_epochs, at an epoch's end (4 steps an epoch)
    assert (last_stop(run_dir)["reason"], last_stop(run_dir)["step"]) == ("patience", end)

    each_step_once(client, run, run_dir, "train_loss", range(0, end + 1))
    each_step_once(client, run, run_dir, "val_loss", range(3, end + 1, 4))
    epochs = history(client, run, "epoch")  # logged by Lightning with the training and the validation metrics
    assert [s for s, _ in epochs] == list(range(0, end + 1))
    assert run.data.params == {"lr": "0.01"}
    assert {a.path for a in client.list_artifacts(run.info.run_id, "lightning")} == {
        "lightning/best.ckpt", "lightning/last.ckpt"}


# --- in this process ---------------------------------------------------------------------------------------

def test_sigterm_stops_the_hf_trainer_after_a_checkpoint_and_ends_the_run_killed(tmp_path, mlflow_server, capfd):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments

    from tracked_train.integrations.hf import TrackedTrainCallback

    class Sigterm(TrainerCallback):  # a batch scheduler's time limit, at step 7
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 7:
                os.kill(os.getpid(), signal.SIGTERM)

    torch.manual_seed(0)
    data = [{"input_ids": t, "labels": t} for t in torch.randint(0, 64, (32, 16))]
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=1, n_head=2,
                                       bos_token_id=0, eos_token_id=0))
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=40, per_device_train_batch_size=8,
                             logging_steps=1, save_steps=10, report_to="none", use_cpu=True, disable_tqdm=True)
    tracking = TrackedTrainCallback(tmp_path / "run", trackers=["mlflow"], experiment=EXPERIMENT,
                                    mlflow_uri=mlflow_server.uri, config={"data": "random"})
    trainer = Trainer(model=model, args=args, train_dataset=data, eval_dataset=data[:8],
                      callbacks=[Sigterm(), tracking])
    before = signal.getsignal(signal.SIGTERM)
    trainer.train()  # no `with`: the run ends with train()
    assert signal.getsignal(signal.SIGTERM) == before  # the Run's handler is gone with the run
    assert trainer.state.global_step == 7 and (tmp_path / "out" / "checkpoint-7").is_dir()  # saved, then stopped
    stop = last_stop(tmp_path / "run")
    assert (stop["reason"], stop["step"]) == ("interrupted", 7) and "SIGTERM at step 7" in stop["detail"]
    assert _last_state(tmp_path / "run")["state"]["hf_checkpoint"] == "checkpoint-7"
    run = mlflow_run(mlflow_server.client(), "run")
    assert run.info.status == "KILLED" and run.data.tags["stop_reason"] == "interrupted"
    assert run.data.params["data"] == "random" and run.data.params["model.n_layer"] == "1"

    capfd.readouterr()
    trainer.evaluate()  # after train() and outside a `with` block: not tracked, and said so
    assert "metrics logged outside trainer.train() are not tracked" in capfd.readouterr().err
    assert not any("val/loss" in r for r in records(tmp_path / "run"))


def _last_state(run_dir: Path) -> dict:
    import torch

    from tracked_train import checkpoint

    return torch.load(checkpoint.locate(run_dir / "checkpoints" / "last") / checkpoint.STATE_FILE,
                      weights_only=True)


def test_lightning_stopping_threshold_is_target_reached_and_validate_after_the_fit_is_not_tracked(tmp_path,
                                                                                                 capfd):
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.callbacks import EarlyStopping

    from tracked_train.integrations.lightning import TrackedTrainLogger

    class Fit(pl.LightningModule):  # y = 2x: learnable, so the loss falls under the threshold
        def __init__(self, lr: float = 0.1):
            super().__init__()
            self.save_hyperparameters()
            self.w = torch.nn.Linear(1, 1)

        def training_step(self, batch, _):
            loss = torch.nn.functional.mse_loss(self.w(batch[0]), batch[1])
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch, _):
            self.log("val_loss", torch.nn.functional.mse_loss(self.w(batch[0]), batch[1]))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    x = torch.linspace(-1, 1, 32).unsqueeze(1)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, 2 * x), batch_size=8)
    pl.seed_everything(0)
    logger = TrackedTrainLogger(tmp_path / "run", config={"task": "y=2x"})
    logger.run.set_tags({"who": "test"})  # the run opens here, before Lightning logs the module's hyperparameters
    trainer = pl.Trainer(max_epochs=50, log_every_n_steps=1, accelerator="cpu", enable_progress_bar=False,
                         enable_model_summary=False, logger=logger, enable_checkpointing=False,
                         callbacks=[EarlyStopping("val_loss", stopping_threshold=0.01)])
    trainer.fit(Fit(), loader, loader)
    assert trainer.current_epoch < 49  # stopped by the threshold, not max_epochs
    stop = last_stop(tmp_path / "run")
    assert stop["reason"] == "target_reached"
    assert re.fullmatch(r"Stopped at step \d+ \(epoch \d+\) by EarlyStopping: Stopping threshold reached: val_loss = "
                        r"[\d.e-]+ < 0\.01\.", stop["detail"]), stop["detail"]
    assert stop["verdict"] == "learning well"  # from train_loss, the logger's loss_metric
    params = [r["params"] for r in records(tmp_path / "run") if r.get("event") == "params"]
    assert params == [{"task": "y=2x"}, {"lr": 0.1}]  # the config at the start, the module's when Lightning gave them
    n = len(records(tmp_path / "run"))
    capfd.readouterr()
    trainer.validate(Fit(), loader)  # after the fit: its run has ended
    assert "metrics of validate/test/predict outside a fit are not tracked" in capfd.readouterr().err
    assert len(records(tmp_path / "run")) == n


def test_bad_input_is_refused_in_one_line_and_import_stays_light(tmp_path):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    from tracked_train.errors import UserError
    from tracked_train.integrations.hf import TrackedTrainCallback, metric_name
    from tracked_train.integrations.lightning import TrackedTrainLogger

    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=1, n_head=2,
                                       bos_token_id=0, eos_token_id=0))
    args = TrainingArguments(output_dir=str(tmp_path / "runs" / "x" / "hf"), report_to="none", use_cpu=True)
    with pytest.raises(UserError, match=r"output_dir .* is inside the run folder .*; give them separate folders") as e:
        Trainer(model=model, args=args, train_dataset=[{"input_ids": torch.zeros(16, dtype=torch.long)}],
                callbacks=[TrackedTrainCallback(tmp_path / "runs" / "x")])
    assert "\n" not in str(e.value)
    assert not (tmp_path / "runs" / "x" / "metrics.jsonl").exists()  # no run was started
    for make in (TrackedTrainCallback, TrackedTrainLogger):
        with pytest.raises(TypeError, match=r"trackers='mlflow' is a string; give a list, e.g. trackers=\['mlflow'\]"):
            make(tmp_path / "y", trackers="mlflow")
    assert [metric_name(n) for n in ("loss", "learning_rate", "grad_norm", "eval_loss", "test_accuracy", "epoch")] == [
        "train/loss", "train/lr", "train/grad_norm", "val/loss", "test/accuracy", "train/epoch"]

    r = subprocess.run([sys.executable, "-c", "import sys, tracked_train, tracked_train.integrations; "
                        "print([m for m in ('transformers', 'lightning', 'pytorch_lightning') if m in sys.modules])"],
                       capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "[]", r.stderr  # `import tracked_train` stays instant
