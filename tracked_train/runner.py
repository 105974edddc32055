"""Start or resume a run: the run folder, trackers, data, then the loop.

Setup failures (bad data, an unreachable tracking server, a tokenizer that
cannot be trained) are :class:`UserError`: a new run's folder is removed and
its trackers aborted, so bad input leaves nothing half-written. Once training
has started, every ending goes through ``trackers.finish`` with its reason.
"""

from __future__ import annotations

import logging
import shutil
import time
import traceback
from pathlib import Path
from typing import Any

from . import distributed
from .config import Config, dump_yaml
from .console import config_table, setup_logging
from .data import check_files
from .early_stopping import Stop
from .errors import ConfigError, UserError
from .trackers import Outcome, RunInfo, Trackers

log = logging.getLogger("tracked_train")


def default_run_name(cfg: Config) -> str:
    m, t = cfg.model, cfg.training
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{cfg.data.source}-d{m.d_model}-l{m.n_layers}-lr{t.lr:g}-bs{t.batch_size}-{stamp}"


def _new_run_dir(cfg: Config) -> tuple[str, Path]:
    root = Path(cfg.run.output_dir)
    if cfg.run.name:
        run_dir = root / cfg.run.name
        if run_dir.exists():
            raise UserError(f"run folder {run_dir} already exists; choose another --run-name "
                            f"or continue it with `tracked-train resume {run_dir}`")
        return cfg.run.name, run_dir
    name = default_run_name(cfg)
    run_dir, n = root / name, 1
    while run_dir.exists():
        n += 1
        run_dir = root / f"{name}-{n}"
    return run_dir.name, run_dir


def _check_world(cfg: Config) -> None:
    dist = distributed.init()
    if cfg.training.batch_size % dist.world_size:
        raise ConfigError(f"training.batch_size={cfg.training.batch_size} must be divisible by the "
                          f"{dist.world_size} torchrun processes (each takes an equal shard of every batch)")
    if not dist.is_main:
        logging.getLogger("tracked_train").setLevel(logging.WARNING)  # rank 0 speaks for the run


def start(cfg: Config, init_from: str | None = None) -> int:
    """``tracked-train run``: a new run, optionally from a logged model's weights. Returns the exit code."""
    _check_world(cfg)
    if not distributed.current().is_main:
        opened = distributed.broadcast(None)  # rank 0 names the run and makes its folder
        if opened is None:
            return 2  # rank 0 reported the problem
        cfg, run_dir, tokenizer = opened
        init = {"tokenizer": tokenizer} if tokenizer is not None else None  # DDP broadcasts rank 0's weights
        return _run(_prepare(cfg, run_dir, Trackers([]), init=init))
    opened = None
    try:
        cfg, run_dir, trackers, init = _open_run(cfg, init_from)
        opened = (cfg, run_dir, init["tokenizer"] if init else None)
    finally:
        distributed.broadcast(opened)
    try:
        parts = _prepare(cfg, run_dir, trackers, init=init)
    except BaseException as e:
        _discard(run_dir, trackers, remove_folder=isinstance(e, UserError))
        raise
    trackers.log_artifact(run_dir / "config.yaml", "config.yaml")
    trackers.log_artifact(run_dir / "tokenizer", "tokenizer")
    return _run(parts)


def _open_run(cfg: Config, init_from: str | None) -> tuple[Config, Path, Trackers, dict[str, Any] | None]:
    """Check the input, make the run folder and start the trackers' runs (bad input: exit 2, nothing left)."""
    check_files(cfg.data)
    init = None
    if init_from:
        from .config import MODEL_SHAPE_KEYS, from_dict
        from .resume import init_weights

        init = init_weights(init_from, cfg.tracking.mlflow_uri)
        shape = {k: v for k, v in from_dict(init["config"]).flat().items() if k in MODEL_SHAPE_KEYS}
        changed = {k: v for k, v in shape.items() if cfg.flat()[k] != v}
        if changed:
            log.warning("--init-from: the weights fix the model's shape: %s",
                        ", ".join(f"{k}={v}" for k, v in changed.items()))
        cfg = cfg.replace(**shape)
    trackers = Trackers.from_specs(cfg.tracking.trackers)  # unknown tracker names fail here, before any folder
    name, run_dir = _new_run_dir(cfg)
    cfg = cfg.replace(**{"run.name": name})
    run_dir.mkdir(parents=True)
    started = False
    try:
        dump_yaml(cfg, run_dir / "config.yaml")
        setup_logging(None)
        trackers.start(RunInfo(name, run_dir, cfg))  # fails fast (exit 2) on an unreachable server
        started = True
        setup_logging(run_dir / "train.log")
        log.info("run %s -> %s\n%s", name, run_dir, config_table(cfg.flat()))
        trackers.log_params(cfg.flat())
        if init is not None:
            trackers.set_tags({"init_from": init_from})
    except BaseException as e:
        _discard(run_dir, trackers if started else None, remove_folder=isinstance(e, UserError))
        raise
    return cfg, run_dir, trackers, init


def _discard(run_dir: Path, trackers: Trackers | None, remove_folder: bool) -> None:
    """Undo a run that never trained: no run left RUNNING on a server; no folder left for bad input."""
    if trackers is not None:
        trackers.abort()
    if remove_folder:
        setup_logging(None)
        shutil.rmtree(run_dir, ignore_errors=True)


def resume(run_dir: Path, state: dict[str, Any], cfg: Config, tags: dict[str, str] | None = None) -> int:
    """Continue ``run_dir`` from a loaded checkpoint ``state`` with (checked) config ``cfg``."""
    _check_world(cfg)
    if not distributed.current().is_main:
        return _run(_prepare(cfg, run_dir, Trackers([]), resume_from=state))
    setup_logging(run_dir / "train.log")
    step = state["step"]
    log.info("resuming %s from step %d\n%s", run_dir, step, config_table(cfg.flat()))
    dump_yaml(cfg, run_dir / "config.yaml")
    trackers = Trackers.from_specs(cfg.tracking.trackers)
    trackers.start(RunInfo(cfg.run.name or run_dir.name, run_dir, cfg, step, state.get("trackers")))
    if not state.get("trackers"):  # a fork: new tracker runs need their params
        trackers.log_params(cfg.flat())
    if tags:
        trackers.set_tags(tags)
        if "config_changes" in tags:
            (run_dir / "config_changes.json").write_text(tags["config_changes"])
            trackers.log_artifact(run_dir / "config_changes.json", "config_changes.json")
    parts = _prepare(cfg, run_dir, trackers, resume_from=state)
    return _run(parts)


def _prepare(cfg: Config, run_dir: Path, trackers: Trackers, resume_from: dict[str, Any] | None = None,
             init: dict[str, Any] | None = None):
    """Data, tokenizer and model: fresh, resumed from a checkpoint state, or initialised from its weights."""
    from .data import prepare
    from .train import build

    t0 = time.perf_counter()
    source = resume_from or init
    tokenizer_bytes = source["tokenizer"].numpy().tobytes() if source else None
    data, tok = prepare(cfg, tokenizer_from=tokenizer_bytes)
    if distributed.current().is_main:
        tok.save(run_dir / "tokenizer")
    log.info("data: %s train / %s validation tokens, vocab %d, %.2f chars/token (%.1f s)",
             f"{len(data.train.tokens):,}", f"{len(data.valid.tokens):,}", tok.vocab_size,
             data.valid_chars_per_token, time.perf_counter() - t0)
    if cfg.data.source == "builtin":
        from .corpus import entropy_rate

        log.info("built-in corpus: entropy rate %.3f nats/char, the lowest loss any model can reach",
                 entropy_rate())
    parts = build(cfg, run_dir, data, tok, trackers, resume_from)
    if init is not None and "model" in init:
        parts.model.load_state_dict(init["model"])
        log.info("initialised the model from the weights of step %d", init["step"])
    return parts


def _run(parts) -> int:
    from .train import train

    trackers = parts.trackers
    try:
        outcome = train(parts)
    except KeyboardInterrupt:
        stop = Stop("interrupted", f"Interrupted twice at step {parts.st.step}; exited without saving.",
                    parts.st.step)
        trackers.finish(Outcome(stop))
        log.info("stopped: %s", stop.detail)
        return 130
    except Exception as e:
        log.error("training failed:\n%s", traceback.format_exc())
        detail = f"Failed at step {parts.st.step}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        trackers.finish(Outcome(Stop("failed", detail, parts.st.step)))
        return 1
    _summary(parts, outcome)  # before finish, so the uploaded train.log holds it
    trackers.finish(outcome)
    return outcome.stop.exit_code


def _summary(parts, o: Outcome) -> None:
    if o.initial_loss is not None and o.final_loss is not None:
        log.info("train loss %.4f -> %.4f (%+.1f%%): %s", o.initial_loss, o.final_loss, -o.decrease_pct, o.verdict)
    log.info("stopped: %s (%s at step %d)", o.stop.detail, o.stop.reason, o.stop.step)
    if o.best_val_loss is not None:
        from .train import safe_exp

        per_char = o.best_val_loss / parts.data.valid_chars_per_token
        floor = ""
        if parts.cfg.data.source == "builtin":
            from .corpus import entropy_rate

            floor = f"; the corpus floor is {entropy_rate():.3f}"
        log.info("best val loss %.4f (perplexity %.2f, %.3f nats/char%s) at step %s", o.best_val_loss,
                 safe_exp(o.best_val_loss), per_char, floor, o.best_step)
    log.info("run folder: %s", parts.run_dir)
