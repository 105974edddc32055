"""One timed training run, started by vs_peers.py in the peers' virtualenv.

    python peers_child.py FRAMEWORK SETTINGS_JSON RESULT_JSON

FRAMEWORK is bare, tracked-train, lightning or hf. Every framework trains
tracked-train's GPT on the batches `tracked_train.data.prepare` gives, with the
same optimizer settings, schedule, clipping and precision, and (except bare)
logs every step to the MLflow server in MLFLOW_TRACKING_URI. Each one notes
the wall time at the end of every optimizer step with its own hook; the result
file gets the time from the launch (BENCH_LAUNCH, set by the parent just
before it started this process) to the end of the first step, the steady-state
rate and this process's peak RSS.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from common import steady_rate  # this script's folder is on sys.path

STEP_TIMES: list[float] = []


def tick() -> None:
    STEP_TIMES.append(time.time())


def settings(path: str):
    """(tracked-train Config, the overrides) for this regime."""
    from tracked_train import config

    overrides = json.loads(Path(path).read_text())
    return config.build([("bench", overrides)]), overrides


def batches(cfg):
    """The same token batches, in the same order, that tracked-train's loop draws."""
    from tracked_train.data import prepare

    data, tok = prepare(cfg)
    t = cfg.training
    return [data.train.get(i * t.batch_size, t.batch_size) for i in range(t.max_steps)], tok


def new_model(cfg, tok):
    import torch

    from tracked_train.lm import gpt_config
    from tracked_train.model import GPT

    torch.manual_seed(cfg.training.seed)
    return GPT(gpt_config(cfg, tok.vocab_size))


def optimizer_and_schedule(cfg, model, fused: bool = True):
    """tracked-train's AdamW (groups, betas, fused kernel); warmup + cosine as a LambdaLR multiplier."""
    import torch

    from tracked_train.model import param_groups
    from tracked_train.schedule import lr_at

    t = cfg.training
    opt = torch.optim.AdamW(param_groups(model, t.weight_decay), lr=t.lr, betas=(0.9, 0.95), fused=fused)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda i: lr_at(i + 1, t) / t.lr)


def bf16(cfg) -> bool:
    from tracked_train.device import pick_precision

    return pick_precision(cfg.training.precision, "cpu") == "bf16"


def run_bare(cfg, overrides, name) -> None:
    """What a user writes by hand: no tracking at all (the floor)."""
    import contextlib

    import torch

    train, tok = batches(cfg)
    model = new_model(cfg, tok)
    opt, sched = optimizer_and_schedule(cfg, model)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16(cfg) else contextlib.nullcontext
    for x, y in train:
        with autocast():
            _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.training.grad_clip)
        opt.step()
        sched.step()
        loss.item()  # a real loop prints its loss
        tick()


def run_tracked(cfg, overrides, name, trackers: str = "jsonl, mlflow, clock") -> None:
    """The real CLI, with a clock tracker added after the default ones."""
    from tracked_train import cli
    from tracked_train.trackers.base import register
    from tracked_train.trackers.null import NullTracker

    @register("clock")
    class Clock(NullTracker):
        def __init__(self, arg: str = "") -> None:
            self.seen = 0

        def log_metrics(self, metrics: dict, step: int) -> None:
            if step > self.seen:
                self.seen = step
                tick()

    sets = [f"{k}={json.dumps(v)}" for k, v in overrides.items()]
    sets += [f"tracking.trackers=[{trackers}]", "tracking.experiment=peers",
             f"run.output_dir={tempfile.mkdtemp(prefix='tt-peer-')}"]
    args = ["run", "--run-name", name, *[a for s in sets for a in ("--set", s)]]
    try:
        cli.main(args, standalone_mode=False)
    except SystemExit as e:
        if e.code:
            raise


def run_lightning(cfg, overrides, name) -> None:
    """Lightning with MLFlowLogger and LearningRateMonitor, logging every step."""
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import Callback, LearningRateMonitor
    from lightning.pytorch.loggers import MLFlowLogger

    train, tok = batches(cfg)
    t = cfg.training

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = new_model(cfg, tok)

        def training_step(self, batch, _):
            _, loss = self.model(*batch)
            self.log("train/loss", loss)
            self.log("train/ppl", torch.exp(loss.detach()))
            return loss

        def configure_optimizers(self):
            # Lightning refuses to clip the gradients of a fused optimizer under bf16-mixed.
            opt, sched = optimizer_and_schedule(cfg, self.model, fused=False)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    class Clock(Callback):
        def on_train_batch_end(self, *_) -> None:
            tick()

    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=t.max_steps, precision="bf16-mixed" if bf16(cfg) else "32-true",
        gradient_clip_val=t.grad_clip, log_every_n_steps=1, num_sanity_val_steps=0,
        logger=MLFlowLogger(experiment_name="peers", run_name=name),  # URI from MLFLOW_TRACKING_URI
        callbacks=[LearningRateMonitor(logging_interval="step"), Clock()],
        default_root_dir=tempfile.mkdtemp(prefix="tt-peer-"),
    )
    trainer.fit(Module(), torch.utils.data.DataLoader(train, batch_size=None))


def run_hf(cfg, overrides, name) -> None:
    """The HF Trainer with report_to="mlflow", logging every step."""
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    train, tok = batches(cfg)
    t = cfg.training
    rows = [{"input_ids": x[i], "labels": y[i]} for x, y in train for i in range(len(x))]

    class Wrapped(torch.nn.Module):  # the Trainer wants the loss under "loss"
        def __init__(self) -> None:
            super().__init__()
            self.gpt = new_model(cfg, tok)

        def forward(self, input_ids, labels):
            logits, loss = self.gpt(input_ids, labels)
            return {"loss": loss, "logits": logits}

    class Clock(TrainerCallback):
        def on_step_end(self, *_, **__) -> None:
            tick()

    os.environ["MLFLOW_EXPERIMENT_NAME"] = "peers"
    model = Wrapped()
    opt, sched = optimizer_and_schedule(cfg, model.gpt)
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="tt-peer-"), run_name=name, max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size, max_grad_norm=t.grad_clip, bf16=bf16(cfg), use_cpu=True,
        logging_steps=1, report_to=["mlflow"], save_strategy="no", dataloader_num_workers=0,
    )
    Trainer(model=model, args=args, train_dataset=rows, optimizers=(opt, sched), callbacks=[Clock()]).train()


def main() -> None:
    framework, settings_path, result_path = sys.argv[1:4]
    launched = float(os.environ["BENCH_LAUNCH"])
    cfg, overrides = settings(settings_path)
    name = Path(result_path).stem
    runs = {"bare": run_bare, "tracked-train": run_tracked, "lightning": run_lightning, "hf": run_hf,
            "tracked-train-null": functools.partial(run_tracked, trackers="clock")}  # the loop, no tracking
    runs[framework](cfg, overrides, name)
    Path(result_path).write_text(json.dumps({
        "steps": len(STEP_TIMES),
        "first_step_s": STEP_TIMES[0] - launched,
        "steps_per_s": steady_rate(STEP_TIMES),
        "tokens_per_step": cfg.training.batch_size * cfg.model.seq_len,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


if __name__ == "__main__":
    main()
