"""The training loop: AdamW, the LR schedule of :mod:`schedule`, clipping, accumulation, AMP.

:func:`tracked_train.parts.build` makes the task's model and the optimizer (or restores them from
a checkpoint), then :func:`train` runs the loop in :func:`_loop`, which reads
top to bottom: one optimizer step, its metrics, evaluation, the stop decision
(:class:`~tracked_train.early_stopping.Stopper`), checkpoints. What is trained
on what, and how it is scored, is the task's (:mod:`tracked_train.task`);
tracking happens only through the :class:`~tracked_train.trackers.Trackers`
fan-out handed in.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import Any

import torch

from . import distributed, schedule
from .console import Progress, peak_tflops
from .early_stopping import Facts, Stop, StopReason, TimeBudget, verdict
from .errors import UserError
from .interrupts import Interrupts
from .parts import Parts, saved_step
from .readback import Window
from .task import Loss, Task
from .trackers import Outcome

log = logging.getLogger("tracked_train")


def to_device(batch: Any, device: str) -> Any:
    """Tensors of a batch (alone, or in tuples, lists and dicts) onto ``device``; anything else as it is."""
    if isinstance(batch, torch.Tensor):
        if device.startswith("cuda"):
            batch = batch.pin_memory()  # so the copy overlaps the GPU's work
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def _as_loss(out: Any, task: Task) -> Loss:
    if isinstance(out, Loss):
        return out
    if isinstance(out, torch.Tensor):
        return Loss(out)
    raise TypeError(f"task {task.cfg.task}: loss() returned a {type(out).__name__}; return a scalar tensor or "
                    "tracked_train.Loss(total, {name: tensor})")


def train_step(p: Parts) -> tuple[torch.Tensor, list[str]]:
    """One optimizer step over ``grad_accum`` micro-batches: ``[loss, *its named parts, grad norm]`` on the
    device (not read back: see :mod:`readback`), and the parts' names.

    Under torchrun each rank takes its shard of every batch (the batch size is
    global), DDP averages the gradients, and the losses are averaged over ranks at the read-back.
    """
    t, dist = p.cfg.training, distributed.current()
    shard = t.batch_size // dist.world_size
    for o in p.optimizers:
        o.zero_grad(set_to_none=True)
    total = torch.zeros((), device=p.device)
    parts: dict[str, torch.Tensor] = {}
    for micro in range(t.grad_accum):
        batch = to_device(p.task.batch(p.st.data_position + dist.rank * shard, shard), p.device)
        p.st.data_position += t.batch_size
        # Gradients are averaged across ranks once per step, on the last micro-batch.
        sync = contextlib.nullcontext() if not dist.enabled or micro == t.grad_accum - 1 else p.forward.no_sync()
        with sync:
            with p.amp():
                loss = _as_loss(p.task.loss(p.forward, batch), p.task)
            p.scaler.scale(loss.total / t.grad_accum).backward()
        total += loss.total.detach().float()
        for name, value in loss.parts.items():
            parts[name] = parts.get(name, 0) + value.detach().float()
    for o in p.optimizers:
        p.scaler.unscale_(o)
    grad_norm = torch.nn.utils.clip_grad_norm_(p.model.parameters(), t.grad_clip or math.inf)
    for o in p.optimizers:
        p.scaler.step(o)
    p.scaler.update()
    means = torch.stack([total, *parts.values()]) / t.grad_accum
    return torch.cat([means, grad_norm.float().to(total.device).reshape(1)]), list(parts)


@torch.no_grad()
def evaluate(p: Parts) -> dict[str, float]:
    """The task's validation metrics, named ``val/...``."""
    p.model.eval()
    try:
        with p.amp():
            metrics = p.task.evaluate(p.model)
    finally:
        p.model.train()
    return {k if k.startswith("val/") else f"val/{k}": float(v) for k, v in metrics.items()}


def train(p: Parts) -> Outcome:
    """Run the loop to a stop; always leaves a resumable ``last`` (except on divergence)."""
    mode = p.cfg.console.progress if distributed.current().is_main else "off"
    total = p.st.plan.end_step if p.st.plan is not None else p.cfg.training.max_steps
    progress = Progress(total, p.st.step, mode, p.task.flops_per_token(p.model) or 0.0,
                        peak_tflops(p.cfg.console.peak_tflops, p.device))
    try:
        with Interrupts() as interrupts:
            stop = _loop(p, progress, interrupts)
    finally:
        progress.close()
    return _outcome(p, stop)


def _loop(p: Parts, progress: Progress, interrupts: Interrupts) -> Stop:
    t = p.cfg.training
    tokens_per_step = t.batch_size * t.grad_accum * p.task.tokens_per_example
    every = p.cfg.logging.interval(p.device)
    p.model.train()
    clock = time.perf_counter() - p.st.elapsed_s
    reserve = Reserve()
    budget = p.stopper.find(TimeBudget)
    window = Window()
    first = p.st.step + 1  # read back alone: its time holds compilation and allocations
    stop = p.stopper.decide(Facts(p.st.step, t.max_steps))  # a resume of a run that had done all its steps
    while stop is None:
        step = p.st.step + 1
        window.start_step()
        lr = schedule.lr_at(step, t, p.st.plan)
        for group in (g for o in p.optimizers for g in o.param_groups):
            group["lr"] = lr
        values, parts = train_step(p)
        p.st.step, p.st.tokens_seen = step, p.st.tokens_seen + tokens_per_step
        window.add(step, {"train/lr": lr, "train/tokens_seen": p.st.tokens_seen}, values, parts)
        evaluating = step % t.eval_every == 0 or step == t.max_steps
        if step % every == 0 or step == first or evaluating or step % t.checkpoint_every == 0:
            _read_back(p, window, progress, tokens_per_step, first)

        # Not on diverged weights: a stop the metrics alone decide skips the evaluation.
        if evaluating and p.stopper.decide(Facts(step)) is None:
            with reserve.timing("eval"):
                _evaluate_and_save_best(p, progress)
        p.st.elapsed_s = time.perf_counter() - clock
        planned_end = p.st.plan.end_step if p.st.plan is not None else None
        # One agreement per step: under torchrun a re-plan (a collective) happens on all ranks or none.
        out_of_time, interrupted, plan_due = _agree(
            budget.due(step, p.st.elapsed_s, planned_end, t.max_steps), interrupts.requested is not None,
            t.time_budget_s is not None and _plan_due(p))
        if plan_due:
            _replan(p, reserve.seconds(), progress)
        if out_of_time or interrupted:
            _read_back(p, window, progress, tokens_per_step, first)  # a stop is coming: every step is known first
        stop = p.stopper.decide(Facts(step, t.max_steps, p.st.elapsed_s, out_of_time, planned_end,
                                      (interrupts.requested or "") if interrupted else None))
        if interrupts.status_requested:
            interrupts.status_requested = False
            log.info(progress.status_line())

        if stop is not None and stop.reason != StopReason.DIVERGED and p.st.last_eval_step != step:
            _evaluate_and_save_best(p, progress)  # "and at the end": every run ends evaluated
        if stop is not None and stop.reason == StopReason.DIVERGED:
            log.warning("not overwriting checkpoints/last with diverged weights; it holds step %s",
                        saved_step(p.run_dir))
        elif stop is not None or step % t.checkpoint_every == 0:
            with reserve.timing("save"):
                p.save("last")
                if step % t.checkpoint_every == 0:
                    p.keep_periodic()
    return stop


def _read_back(p: Parts, window: Window, progress: Progress, tokens_per_step: int, first: int) -> None:
    """Every pending step's values, in one transfer: logged at their own steps, then seen by the stop conditions."""
    rows, seconds = window.take()
    if not rows:
        return
    tok_s = tokens_per_step * len(rows) / seconds  # the window's rate, each of its steps' figure
    measured: dict[str, float] = {"train/tokens_per_sec": tok_s}
    if (mfu := progress.mfu(tok_s)) is not None:
        measured["train/mfu"] = mfu
    if p.device.startswith("cuda"):
        measured["train/peak_memory_mib"] = torch.cuda.max_memory_allocated(p.device) / 2**20
    for step, v in rows:
        p.st.record_loss(v["loss"])
        metrics = {"train/loss": v["loss"], **{f"train/loss/{k}": x for k, x in v["parts"].items()},
                   "train/lr": v["train/lr"], **{f"train/{k}": x for k, x in p.task.derived_metrics(v["loss"]).items()},
                   "train/grad_norm": v["grad_norm"], **measured, "train/tokens_seen": v["train/tokens_seen"]}
        p.trackers.log_metrics(metrics, step)
        progress.update(step, v["loss"], v["train/lr"], tok_s, v["train/tokens_seen"], v["parts"])
        _check_monitor(p, metrics, "train/")
        p.stopper.observe(step, metrics)
    if rows[-1][0] == first:
        progress.restart_clock(first)  # the rate and ETA from here on leave out the first step
        if p.compiled:
            log.info("step %d took %.1f s (torch.compile compiling, allocations); tokens/s, MFU, the ETA and "
                     "the time budget's pace leave it out", first, seconds)


class Reserve:
    """The seconds a budgeted run keeps for its ending: the last evaluation and checkpoint, as last measured."""

    def __init__(self) -> None:
        self.last: dict[str, float] = {}

    @contextlib.contextmanager
    def timing(self, what: str):
        t0 = time.perf_counter()
        yield
        self.last[what] = time.perf_counter() - t0

    def seconds(self) -> float:
        return sum(self.last.values())


def _plan_due(p: Parts) -> bool:
    """Whether this rank's clock asks for a (re-)plan of the time budget (:mod:`schedule`)."""
    st = p.st
    if st.pace_from is None:
        st.pace_from = (st.step, st.elapsed_s)  # the first step (allocations, compilation) is not typical
        return False
    return schedule.due(st.plan, st.step, st.elapsed_s, p.cfg.training.time_budget_s, st.last_eval_step == st.step)


def _replan(p: Parts, reserve_s: float, progress: Progress) -> None:
    """Fit the schedule to what is left of the budget at the measured pace; every rank computes the same plan."""
    t, st = p.cfg.training, p.st
    s_per_step = (st.elapsed_s - st.pace_from[1]) / max(1, st.step - st.pace_from[0])
    elapsed = st.elapsed_s
    if distributed.current().enabled:  # the slowest rank sets the pace, so all ranks plan alike
        s_per_step, reserve_s, elapsed = distributed.all_reduce([s_per_step, reserve_s, elapsed], op="max")
    st.plan = schedule.replan(st.plan, st.step, elapsed, s_per_step, t.time_budget_s, reserve_s, t)
    progress.set_total(st.plan.end_step)


def _agree(*flags: bool) -> list[bool]:
    """Under torchrun, a flag raised on any rank (a signal, the clock) holds on all: they stop together."""
    if not distributed.current().enabled:
        return list(flags)
    return [v > 0 for v in distributed.all_reduce([float(f) for f in flags], op="max")]


def _check_monitor(p: Parts, metrics: dict[str, float], kind: str) -> None:
    """A monitor no metric answers would never stop or save a best: bad input, said at its first chance."""
    metric = p.stopper.monitor.metric
    if metric.startswith(kind) and metric not in metrics:
        names = ", ".join(sorted(metrics))
        raise UserError(f"early_stopping.monitor={metric!r} is not a metric this task logs ({names}); "
                        f"fix it and `tracked-train resume {p.run_dir} --set early_stopping.monitor=... "
                        "--allow-config-change`")


def _evaluate_and_save_best(p: Parts, progress: Progress) -> None:
    val = p.evaluated = evaluate(p)
    step = p.st.last_eval_step = p.st.step
    p.trackers.log_metrics(val, step)
    _check_monitor(p, val, "val/")
    p.stopper.observe(step, val, evaluation=True)
    monitor = p.stopper.monitor
    improved = monitor.best_step == step and monitor.improved
    shown = " | ".join(f"{k.replace('/', ' ')} {v:.4f}" for k, v in val.items())  # "val loss 2.3141 | ..."
    log.info("eval step %d | %s%s | %s", step, shown, " | new best" if improved else "", progress.status_line())
    if improved:
        p.st.best_metrics = {**val, monitor.metric: monitor.best}
        p.save("best", p.st.best_metrics)


def _outcome(p: Parts, stop: Stop) -> Outcome:
    initial = sum(p.st.first_losses) / len(p.st.first_losses) if p.st.first_losses else None
    final = sum(p.st.recent_losses) / len(p.st.recent_losses) if p.st.recent_losses else None
    drop, word = verdict(initial, final) if initial is not None and final is not None else (0.0, "not learning")
    m = p.stopper.monitor
    best = p.st.best_metrics
    return Outcome(stop, m.best_step, best.get("val/loss"), initial, final, drop, word, best.get("val/nats_per_char"),
                   monitor=m.metric, mode=m.mode, best_value=m.best if m.has_best else None,
                   best_val_bpb=best.get("val/bpb"))  # the evaluation that made `best`: in every checkpoint
