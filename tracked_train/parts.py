"""What the loop works on: one run's model, optimizers, scaler, stop conditions and loop state (:class:`Parts`),
built from the seed or restored from a checkpoint (:func:`build`), and saved as checkpoints (:meth:`Parts.save`)."""

from __future__ import annotations

import contextlib
import logging
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import checkpoint, distributed, early_stopping
from .config import Config
from .device import keep_freed_memory, pick_device, pick_precision
from .early_stopping import Judge, Stopper
from .optim import optimizers
from .task import Task, build_model, monitor_of
from .trackers import Trackers
from .training_state import LoopState, rng_state, set_rng_state

log = logging.getLogger("tracked_train")


@dataclass
class Parts:
    cfg: Config
    run_dir: Path
    task: Task
    model: torch.nn.Module
    forward: Any  # the model, or its DDP / torch.compile'd wrapper: what the task's loss calls
    optimizers: list[torch.optim.Optimizer]
    scaler: torch.amp.GradScaler
    stopper: Stopper
    trackers: Trackers
    device: str
    amp: Any  # () -> autocast context
    st: LoopState
    evaluated: dict[str, float] = field(default_factory=dict)  # the validation metrics of step st.last_eval_step
    compiled: bool = False  # `forward` is torch.compile'd: its first step compiles

    def checkpoint_state(self) -> dict[str, Any]:
        return {
            "format_version": checkpoint.FORMAT_VERSION,
            "step": self.st.step,
            "loop": asdict(self.st),
            "model": self.model.state_dict(),
            "optimizer": [o.state_dict() for o in self.optimizers],
            "scheduler": {"kind": self.cfg.training.schedule, "step": self.st.step},
            "scaler": self.scaler.state_dict(),
            "early_stopping": self.stopper.state_dict(),
            "rng": rng_state(),
            "config": self.cfg.to_dict(),
            "task_state": self.task.state(),
            "trackers": self.trackers.state(),
        }

    def save(self, kind: str, metrics: dict[str, float] | None = None) -> None:
        """Every rank calls this (their RNG states are gathered); rank 0 writes."""
        import yaml

        state = self.checkpoint_state()
        if distributed.current().enabled:
            state["rng_per_rank"] = distributed.gather(state["rng"])
        if not distributed.current().is_main:
            return
        folder = self.run_dir / "checkpoints" / kind
        checkpoint.save(folder, state, {
            "config.yaml": yaml.safe_dump(self.cfg.to_dict(), sort_keys=False).encode(),
            **self.task.checkpoint_files(),
        })
        self._upload(folder, metrics)

    def _upload(self, folder: Path, metrics: dict[str, float] | None) -> None:
        meta: dict[str, Any] = {"step": self.st.step, "tokens_seen": self.st.tokens_seen}
        meta.update({key.replace("/", "_"): value for key, value in (metrics or {}).items()})  # val/loss -> val_loss
        self.trackers.log_artifact(folder, f"checkpoints/{folder.name}", meta)

    def keep_periodic(self) -> None:
        """``training.keep_checkpoints``: ``last`` (just saved) copied to ``checkpoints/step-000500``, uploaded with
        this step's validation metrics (if it was evaluated), and the oldest pruned so the N newest remain."""
        keep = self.cfg.training.keep_checkpoints
        if keep is None or not distributed.current().is_main:
            return
        checkpoints = self.run_dir / "checkpoints"
        folder = checkpoints / checkpoint.step_name(self.st.step)
        checkpoint.save_copy(checkpoints / "last", folder)
        self._upload(folder, self.evaluated if self.st.last_eval_step == self.st.step else None)
        for step in checkpoint.prune(checkpoints, keep):
            log.debug("pruned checkpoints/%s (training.keep_checkpoints=%d)", checkpoint.step_name(step), keep)


def build(cfg: Config, run_dir: Path, task: Task, trackers: Trackers, state: dict[str, Any] | None = None,
          judge: Judge | None = None) -> Parts:
    """Model, optimizer and loop state: fresh from the seed, or restored from ``state``."""
    t = cfg.training
    dist = distributed.current()
    random.seed(t.seed)
    np.random.seed(t.seed % 2**32)
    torch.manual_seed(t.seed)
    kind = pick_device(t.device)
    device = f"cuda:{dist.local_rank}" if kind == "cuda" else kind
    if kind == "cpu":
        keep_freed_memory()
    if kind == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls that autocast leaves on TF32 tensor cores
        torch.backends.cudnn.allow_tf32 = True
    precision = pick_precision(t.precision, kind)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def amp():
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=kind, dtype=amp_dtype)

    model = build_model(task).to(device)
    opts = optimizers(model, t, kind)
    scaler = torch.amp.GradScaler(kind if kind != "mps" else "cpu", enabled=precision == "fp16")
    stopper = make_stopper(cfg, run_dir, judge)
    st = LoopState()
    if state is not None:
        checkpoint.load_weights(model, state["model"])
        try:
            saved = state["optimizer"]
            saved = [saved] if isinstance(saved, dict) else saved  # one AdamW, as checkpoints before Muon hold it
            if len(saved) != len(opts):
                raise ValueError(f"{len(saved)} optimizer states for {len(opts)} optimizers")
            for o, sd in zip(opts, saved):
                o.load_state_dict(sd)
            scaler.load_state_dict(state["scaler"])
            stopper.load_state_dict(state["early_stopping"])
            st = LoopState(**state["loop"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise checkpoint.CheckpointError(f"the checkpoint's training state does not fit its config ({e}); "
                                             "it is damaged or was edited") from None
    forward = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        torch.manual_seed(t.seed + dist.rank)  # weights came from one seed; dropout differs by rank
        forward = DistributedDataParallel(model, device_ids=[dist.local_rank] if kind == "cuda" else None)
    compiled = t.compile if t.compile is not None else kind == "cuda"
    if compiled:
        forward = torch.compile(forward)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model: %s parameters (%.2f M) | device %s | precision %s%s%s", f"{n_params:,}", n_params / 1e6, device,
             precision, " | torch.compile" if compiled else "",
             f" | {dist.world_size} processes (DDP)" if dist.enabled else "")
    if state is not None:
        rng = state["rng"]
        if dist.enabled and len(state.get("rng_per_rank", [])) == dist.world_size:
            rng = state["rng_per_rank"][dist.rank]
        set_rng_state(rng)  # last, so nothing above consumes the restored streams
    return Parts(cfg, run_dir, task, model, forward, opts, scaler, stopper, trackers, device, amp, st,
                 compiled=compiled)


def make_stopper(cfg: Config, run_dir: Path | str = "RUN_DIR", judge: Judge | None = None) -> Stopper:
    """The run's stop conditions, from its config and task (the one place they are assembled)."""
    es, t = cfg.early_stopping, cfg.training
    metric, mode = monitor_of(cfg)
    return early_stopping.standard(
        monitor=metric, mode=mode, patience=es.patience, min_delta=es.min_delta,
        target=es.target if es.target is not None else es.target_loss, divergence_factor=es.divergence_factor,
        time_budget_s=t.time_budget_s, max_steps=t.max_steps, judge=judge, run_dir=run_dir)


def saved_step(run_dir: Path) -> int | str:
    """The step checkpoints/last holds (for messages)."""
    manifest = run_dir / "checkpoints" / "last" / checkpoint.MANIFEST
    if manifest.exists():
        import json

        return json.loads(manifest.read_text()).get("step", "?")
    return "none"
