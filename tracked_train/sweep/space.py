"""SPACE.yaml: which config keys a sweep varies, and over what.

One line per key, a dotted config key mapped to one distribution::

    training.lr: {log_uniform: [1.0e-4, 3.0e-2]}
    model.d_model: {choice: [32, 64]}
    training.warmup_steps: {int: [0, 50]}       # [lo, hi] or [lo, hi, step]
    model.dropout: {uniform: [0.0, 0.2]}
    model.n_layers: {log_int: [1, 8]}

The space is checked against the config before anything is created: every
key must exist, and every value a trial can get (both ends of each range, each
choice, and the combinations of those ends) must pass the config's own
validation, so a trial never fails on a value the space allowed.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BadValue, ConfigError

KINDS = ("log_uniform", "uniform", "int", "log_int", "choice")
# Sections no trial may vary: they name the run or where it is recorded, not what it learns.
FIXED_SECTIONS = ("run", "tracking", "console")
# Checking every combination of range ends is 2^k configs; past this many only each value alone is checked.
MAX_COMBINATIONS = 4096


@dataclass(frozen=True)
class Param:
    key: str  # dotted config key
    kind: str  # one of KINDS
    args: tuple[Any, ...]  # (lo, hi) / (lo, hi, step) / the choices

    def describe(self) -> str:
        """``log_uniform(0.0001, 0.03)``: how the parent run and the docs show it."""
        return f"{self.kind}({', '.join(_show(a) for a in self.args)})"

    def suggest(self, trial: Any) -> Any:
        """This key's value for an Optuna trial."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.args))
        if self.kind in ("log_uniform", "uniform"):
            return trial.suggest_float(self.key, self.args[0], self.args[1], log=self.kind == "log_uniform")
        step = self.args[2] if len(self.args) == 3 else 1
        return trial.suggest_int(self.key, self.args[0], self.args[1], step=step, log=self.kind == "log_int")

    def extremes(self) -> list[Any]:
        """The values validation must accept: each choice, or both ends of a range."""
        if self.kind == "choice":
            return list(self.args)
        lo, hi = self.args[0], self.args[1]
        if len(self.args) == 3:  # int with a step: the largest value reached is lo + k*step
            hi = lo + (hi - lo) // self.args[2] * self.args[2]
        return [lo, hi] if hi != lo else [lo]


@dataclass(frozen=True)
class Space:
    path: str
    params: tuple[Param, ...]

    def describe(self) -> dict[str, str]:
        return {p.key: p.describe() for p in self.params}

    def suggest(self, trial: Any) -> dict[str, Any]:
        return {p.key: p.suggest(trial) for p in self.params}


def _show(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def load(path: str | Path, base: Any) -> Space:
    """Read and check SPACE.yaml against the resolved base config; ConfigError names the line to fix."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"space file {str(p)!r} does not exist; pass a YAML file to --space "
                          "(e.g. experiments/sweep-quick.yaml's space)")
    try:
        doc = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark else ""
        raise ConfigError(f"{p}:{where} malformed YAML ({getattr(e, 'problem', None) or 'invalid YAML'}); "
                          "fix the file's syntax") from None
    if not isinstance(doc, dict) or not doc:
        raise ConfigError(f"{p}: expected a mapping of config keys to distributions, e.g. "
                          "'training.lr: {log_uniform: [1.0e-4, 3.0e-2]}'")
    params = tuple(_param(p, key, spec, base) for key, spec in doc.items())
    space = Space(str(p), params)
    check(space, base)
    return space


def _param(path: Path, key: Any, spec: Any, base: Any) -> Param:
    from ..config import FIELDS, TASK_ARGS, build

    where = f"{path}: {key}"
    if not isinstance(key, str) or "." not in key:
        raise ConfigError(f"{where}: keys are dotted config keys such as 'training.lr', one per line "
                          "(not nested sections)")
    if key.startswith(TASK_ARGS):  # one of the task's own settings: its type is the task's to say
        from ..task import setting_type

        try:
            tp = setting_type(base.task, key[len(TASK_ARGS):])
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    elif key not in FIELDS:
        try:
            build([(str(path), {key: None})])  # the config's own unknown-key error, with its did-you-mean
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    else:
        tp = FIELDS[key][0]
    if key.split(".", 1)[0] in FIXED_SECTIONS:
        raise ConfigError(f"{where}: the {key.split('.', 1)[0]} section cannot be swept (it names or records the "
                          "run); set it in the base config or with --set instead")
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
        raise ConfigError(f"{where}: expected one distribution, one of {', '.join(KINDS)}, e.g. "
                          f"'{key}: {{choice: [a, b]}}' or '{key}: {{uniform: [lo, hi]}}'")
    kind, args = next(iter(spec.items()))
    if not isinstance(args, list) or not args:
        example = "[a, b]" if kind == "choice" else "[lo, hi]"
        raise ConfigError(f"{where}: {kind} takes a list, e.g. {{{kind}: {example}}}")
    if kind == "choice":
        if not all(a is None or isinstance(a, (bool, int, float, str)) for a in args):
            raise ConfigError(f"{where}: choice values must be plain numbers, strings or true/false")
        if len(set(map(repr, args))) != len(args):
            raise ConfigError(f"{where}: choice lists a value twice; list each value once")
        return Param(key, kind, tuple(args))
    ints = kind in ("int", "log_int")
    n_ok = (2, 3) if kind == "int" else (2,)
    numbers = all(isinstance(a, (int, float)) and not isinstance(a, bool) and math.isfinite(a) for a in args)
    if len(args) not in n_ok or not numbers or (ints and not all(float(a).is_integer() for a in args)):
        shape = "[lo, hi] or [lo, hi, step]" if kind == "int" else "[lo, hi]"
        what = "integers" if ints else "numbers"
        raise ConfigError(f"{where}: {kind} takes {shape} of {what}, got {args!r}")
    args = [int(a) for a in args] if ints else [float(a) for a in args]
    lo, hi = args[0], args[1]
    if lo > hi or (not ints and lo == hi):
        raise ConfigError(f"{where}: {kind} needs lo < hi, got [{_show(lo)}, {_show(hi)}]; swap or widen them")
    if kind.startswith("log") and lo <= 0:
        raise ConfigError(f"{where}: {kind} needs lo > 0 (a log scale has no 0), got {_show(lo)}; use "
                          f"{'int' if ints else 'uniform'} for a range from 0")
    if len(args) == 3 and args[2] <= 0:
        raise ConfigError(f"{where}: the step of int must be positive, got {args[2]}")
    if not ints and _base_type(tp) is int:
        raise ConfigError(f"{where}: {key} is an integer; use {{int: [lo, hi]}} or {{log_int: [lo, hi]}} "
                          f"instead of {kind}")
    return Param(key, kind, tuple(args))


def _base_type(tp: Any) -> Any:
    import types
    import typing

    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def check(space: Space, base: Any) -> None:
    """Every value the space allows passes the config's validation on top of ``base``."""
    from ..config import build

    source = f"{space.path} (with the base config)"
    for p in space.params:  # each value alone first: the error names one key
        for v in p.extremes():
            try:
                build([(source, {p.key: v})], base)
            except BadValue:
                raise  # it names the space's value already
            except ConfigError as e:  # a rule across keys: say which value of the space broke it
                raise ConfigError(f"{space.path}: {p.key}={_show(v)} with the base config is invalid ({e}); "
                                  "narrow the space or change the base config") from None
    choices = [p.extremes() for p in space.params]
    if math.prod(len(c) for c in choices) > MAX_COMBINATIONS:
        return
    for combo in itertools.product(*choices):
        values = dict(zip((p.key for p in space.params), combo))
        try:
            build([(source, values)], base)
        except ConfigError as e:
            shown = ", ".join(f"{k}={_show(v)}" for k, v in values.items())
            raise ConfigError(f"{space.path}: the combination {shown} is invalid ({e}); narrow the space so "
                              "every combination is a valid config") from None
