"""The one precedence rule (defaults < YAML < environment < ``--set``), validation, and a recorded config
read back (a checkpoint's, config.yaml)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..typed_values import coerce
from .environment import env_name, env_overrides
from .keys import DEPRECATED_KEYS, dotted, load_yaml, parse_assignment, unknown_key
from .sections import FIELDS, LM_SECTIONS, TASK_ARGS, Config, tracker_key


def build(layers: list[tuple[str, Mapping[str, Any]]], base: Config | None = None, strict: bool = True) -> Config:
    """Apply layers of dotted overrides in order (later wins) and validate.

    Each layer is ``(source, values)``; the source names where a bad value came
    from in the error message. ``strict`` False (a recorded run's config) keeps the settings of a tracker
    that is not installed here as they were recorded.
    """
    values: dict[str, Any] = {}
    task_args: dict[str, Any] = {}
    task_sources: dict[str, str] = {}
    tracker_args: dict[str, dict[str, Any]] = {}
    tracker_sources: dict[str, dict[str, str]] = {}
    for source, layer in layers:
        for key, value in layer.items():
            if key in DEPRECATED_KEYS:
                key = _renamed(key, source)
            if key.startswith(TASK_ARGS):  # checked against the task's own Settings below
                task_args[key[len(TASK_ARGS):]] = value
                task_sources[key[len(TASK_ARGS):]] = source
                continue
            if (parts := tracker_key(key)) is not None:  # checked against the tracker's own Settings below
                tracker_args.setdefault(parts[0], {})[parts[1]] = value
                tracker_sources.setdefault(parts[0], {})[parts[1]] = source
                continue
            if key not in FIELDS:
                raise unknown_key(key)
            tp, f = FIELDS[key]
            values[key] = coerce(key, value, tp, f.metadata, source)
    base = base or Config()
    spec = values.get("task", base.task)
    if not spec.strip():
        raise ConfigError("task is empty; name a task: lm, module.path:Class or path/to/file.py:Class")
    kept = dict(base.task_args) if spec == base.task else {}  # another task's settings do not carry over
    values["task_args"] = _task_settings(spec, {**kept, **task_args}, task_sources)
    used = [t.partition("=")[0] for t in values.get("tracking.trackers", base.tracking.trackers)]
    trackers = _tracker_settings(used, base.tracker_args, tracker_args, tracker_sources, strict)
    cfg = base.replace(**{k: v for k, v in values.items() if k != "task_args"})
    cfg = dataclasses.replace(cfg, task_args=values["task_args"], tracker_args=trackers)
    validate(cfg)
    return cfg


_noticed: set[str] = set()


def _renamed(key: str, source: str) -> str:
    """A key from before each tracker had its own section: its new name, said once per process (not for a
    checkpoint's or an old run's config.yaml, which nobody should have to edit)."""
    new = DEPRECATED_KEYS[key]
    if source not in QUIET_SOURCES and key not in _noticed:
        import logging

        _noticed.add(key)
        hint = f"{env_name(new)}" if source == "environment" else new
        logging.getLogger("tracked_train").warning(
            "%s: %s is deprecated; write %s (the same setting)", source,
            env_name(key) if source == "environment" else key, hint)
    return new


QUIET_SOURCES = frozenset({"checkpoint", "the MLflow model", "config.yaml"})


def _tracker_settings(used: list[str], base: Mapping[str, Mapping[str, Any]], given: dict[str, dict[str, Any]],
                      sources: dict[str, dict[str, str]], strict: bool) -> dict[str, dict[str, Any]]:
    """Every setting of each tracker the run uses or configures, typed: defaults < ``base`` < ``given``."""
    from ..errors import UserError
    from ..trackers.base import settings_class
    from ..typed_values import coerce_fields, defaults_of

    out: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys([*used, *base, *given]):
        try:
            cls = settings_class(name)
        except UserError as e:
            if strict:
                where = "" if name in used else f" (in tracking.{name}.{next(iter(given.get(name, {'': 0})))})"
                raise ConfigError(f"{e}{where}") from None
            out[name] = {**base.get(name, {}), **given.get(name, {})}  # a recorded run's tracker not installed here
            continue
        typed = coerce_fields(cls, given.get(name, {}), f"tracking.{name}.", f"tracker {name}", sources.get(name))
        merged = {**defaults_of(cls), **base.get(name, {}), **typed}
        if merged:
            out[name] = {k: tuple(v) if isinstance(v, list) else v for k, v in merged.items()}
    return out


def _task_settings(spec: str, given: dict[str, Any], sources: dict[str, str]) -> dict[str, Any]:
    """Every setting of the task, typed: its defaults, then ``given`` (validated like any key)."""
    if spec == "lm":  # its settings are the model, data and tokenizer sections (and importing it loads torch)
        if given:
            raise ConfigError(f"unknown task setting 'task_args.{next(iter(given))}': the lm task's settings are "
                              "the model., data. and tokenizer. keys")
        return {}
    from ..task import coerce_settings, defaults

    return coerce_settings(spec, {**defaults(spec), **given}, sources)


def resolve(config_file: str | None, sets: list[str], cli: Mapping[str, Any] | None = None,
            environ: Mapping[str, str] | None = None) -> Config:
    """The one precedence rule: defaults < MLFLOW_EXPERIMENT_NAME < YAML < environment < CLI (--set, flags)."""
    env = os.environ if environ is None else environ
    layers: list[tuple[str, Mapping[str, Any]]] = []
    if env.get("MLFLOW_EXPERIMENT_NAME"):  # MLflow's own variable, honoured as MLflow users expect
        layers.append(("MLFLOW_EXPERIMENT_NAME", {"tracking.experiment": env["MLFLOW_EXPERIMENT_NAME"]}))
    if config_file:
        layers.append((str(config_file), load_yaml(config_file)))
    layers.append(("environment", env_overrides(env)))
    layers.append(("--set", dict(parse_assignment(s) for s in sets)))
    if cli:
        layers.append(("command line", {k: v for k, v in cli.items() if v is not None}))
    return build(layers)


def validate(cfg: Config) -> None:
    """Cross-field rules that no single field's type can express."""
    m, t, d = cfg.model, cfg.training, cfg.data
    if cfg.task != "lm":
        for sec in LM_SECTIONS:
            changed = [k for k, v in dataclasses.asdict(getattr(cfg, sec)).items()
                       if v != getattr(getattr(Config(), sec), k)]
            if changed:
                raise ConfigError(f"{sec}.{changed[0]} is a setting of the built-in language model (task lm); "
                                  f"task {cfg.task} takes its settings under task_args (see --print-config)")
    if cfg.run.name is not None:
        from ..names import problem, sanitise

        why = problem(cfg.run.name)
        if why:
            raise ConfigError(f"run name {cfg.run.name[:60]!r}{'...' if len(cfg.run.name) > 60 else ''} {why}; "
                              f"it names a folder: use e.g. --run-name {sanitise(cfg.run.name)!r}")
    if m.d_model % m.n_heads:
        raise ConfigError(f"model.d_model={m.d_model} must be divisible by model.n_heads={m.n_heads}")
    if m.pos_encoding == "rope" and (m.d_model // m.n_heads) % 2:
        raise ConfigError(f"model.d_model={m.d_model} / model.n_heads={m.n_heads} gives heads of "
                          f"{m.d_model // m.n_heads} features; rotary positions need an even head size: change "
                          "either, or set model.pos_encoding=learned")
    kv = m.n_kv_heads or m.n_heads
    if m.n_heads % kv:
        raise ConfigError(f"model.n_heads={m.n_heads} must be divisible by model.n_kv_heads={kv}")
    if t.min_lr is not None and t.min_lr > t.lr:
        raise ConfigError(f"training.min_lr={t.min_lr:g} must not exceed training.lr={t.lr:g}; lower it, or clear it "
                          "(training.min_lr=) to end at lr * training.min_lr_ratio")
    if d.source == "text" and not d.train_files:
        raise ConfigError("data.source=text needs data.train_files; e.g. --set data.train_files=train.txt")
    if d.source == "hf" and not d.hf_name:
        raise ConfigError("data.source=hf needs data.hf_name; e.g. --set data.hf_name=wikitext")
    if t.precision == "fp16" and t.device == "cpu":
        raise ConfigError("training.precision=fp16 needs a GPU; use bf16 or fp32 on the CPU")
    es = cfg.early_stopping
    if es.target is not None and es.target_loss is not None and es.target != es.target_loss:
        raise ConfigError(f"early_stopping.target={es.target:g} and early_stopping.target_loss={es.target_loss:g} "
                          "disagree; set only early_stopping.target (target_loss is its older name)")
    if es.monitor is not None and not es.monitor.startswith(("train/", "val/")):
        raise ConfigError(f"early_stopping.monitor={es.monitor!r} is not a logged metric; name one such as "
                          "val/loss, val/accuracy or train/loss")
    if not cfg.tracking.trackers:
        raise ConfigError("tracking.trackers is empty; name at least one tracker, e.g. jsonl")


def from_dict(nested: Mapping[str, Mapping[str, Any]], source: str = "checkpoint") -> Config:
    """Rebuild a Config from ``Config.to_dict()`` output (a checkpoint or config.yaml)."""
    flat: dict[str, Any] = {}
    for s, vals in nested.items():
        if s == "task":
            flat["task"] = vals
        elif not isinstance(vals, Mapping):
            raise ConfigError(f"{source}: section '{s}' is not a mapping of keys")
        else:
            flat.update(dotted(s, vals))
    return build([(source, flat)], strict=False)


def to_yaml(cfg: Config) -> str:
    """The config as ``config.yaml`` holds it: sections in order, secrets redacted."""
    import yaml

    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def dump_yaml(cfg: Config, path: Path) -> None:
    path.write_text(to_yaml(cfg))
