"""The task contract: your model, data, loss and evaluation under tracked-train's loop.

A task is a class with four required methods; the loop owns everything else
(optimizer, schedule, AMP, clipping, accumulation, torchrun, checkpoints,
exact resume, tracking, every stop condition). The built-in language model,
:class:`tracked_train.lm.LanguageModel` (``task: lm``), is written against the
same contract. A minimal task::

    @dataclass(frozen=True)
    class Settings:                      # the YAML section `task_args:`, validated like any config key
        width: int = 64

    class MyTask(tracked_train.Task):
        Settings = Settings
        monitor, mode = "val/accuracy", "max"

        def build_model(self):           # your nn.Module
            return Net(self.settings.width)

        def batch(self, position, size):  # the examples [position, position + size) of the seed's order
            return make_examples(self.cfg.training.seed, position, size)

        def loss(self, model, batch):    # a tensor, or Loss(total, {"name": part, ...})
            ...

        def evaluate(self, model):       # {"loss": ..., "accuracy": ...} -> logged as val/loss, val/accuracy
            ...

Choose it with ``task: my_package.my_module:MyTask``, a file
``task: path/to/file.py:MyTask``, or a name registered in the entry point group
``tracked_train.tasks``. See docs/tasks.md.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.util
import sys
import typing
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from .errors import ConfigError, UserError, describe

if TYPE_CHECKING:
    import torch

    from .config import Config
    from .data import DatasetInfo

ENTRY_POINT_GROUP = "tracked_train.tasks"
BUILTIN = {"lm": "tracked_train.lm:LanguageModel"}


@dataclass
class Loss:
    """A batch's loss: the ``total`` the optimizer minimises and its named parts, logged as ``train/loss/NAME``."""

    total: torch.Tensor
    parts: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class NoSettings:
    """A task without settings of its own: ``task_args`` must stay empty."""


class Task(ABC):
    """What a user brings to the loop. One instance per process, built from the run's config.

    Required: :meth:`build_model`, :meth:`batch`, :meth:`loss`, :meth:`evaluate`.

    Exact resume needs :meth:`batch` to be a pure function of the seed and
    ``position`` (the loop checkpoints only the position), or the task's own
    data state returned by :meth:`state` and given back to :meth:`load_state`.
    """

    #: A frozen dataclass of the task's own settings: the config's ``task_args`` section.
    Settings: ClassVar[type] = NoSettings
    #: The metric early stopping, the best checkpoint and sweeps follow (``early_stopping.monitor`` overrides).
    monitor: ClassVar[str] = "val/loss"
    mode: ClassVar[Literal["min", "max"]] = "min"
    #: Tokens (or positions) per example: the unit of ``train/tokens_seen`` and ``tokens_per_sec``.
    tokens_per_example: int = 1

    def __init__(self, cfg: Config, settings: Any):
        self.cfg, self.settings = cfg, settings

    # -- required -----------------------------------------------------------------------------
    @abstractmethod
    def build_model(self) -> torch.nn.Module:
        """A new model, initialised from the global torch seed (the loop seeds it)."""

    @abstractmethod
    def batch(self, position: int, size: int) -> Any:
        """The training examples ``[position, position + size)``: tensors, or tuples / dicts of them."""

    @abstractmethod
    def loss(self, model: torch.nn.Module, batch: Any) -> torch.Tensor | Loss:
        """The loss of ``batch`` (already on the model's device) under ``model`` (maybe DDP- or compile-wrapped)."""

    @abstractmethod
    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """Validation metrics, logged as ``val/NAME`` (called in eval mode, under no_grad and autocast)."""

    # -- optional -----------------------------------------------------------------------------
    def prepare(self, run_dir: Path | None) -> None:
        """Load or generate data before training (after :meth:`load_state` on a resume)."""

    def state(self) -> dict[str, Any]:
        """Task state a checkpoint must carry (tensors, numbers, strings): a tokenizer, a data loader's state."""
        return {}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state` returned (a resume, ``--init-from``, ``tracked_train.load``)."""

    def flops_per_token(self, model: torch.nn.Module) -> float | None:
        """Training FLOPs per token, for the MFU figure on a GPU."""
        return None

    def derived_metrics(self, loss: float) -> dict[str, float]:
        """Metrics computed from a step's mean loss, logged as ``train/NAME`` (the language model's perplexity)."""
        return {}

    def datasets(self) -> Sequence[DatasetInfo]:
        """The data as trackers record it (MLflow dataset inputs)."""
        return ()

    def describe(self) -> str | None:
        """One line about the data for the log, after :meth:`prepare`."""
        return None

    def checkpoint_files(self) -> dict[str, bytes]:
        """Files for people and other tools beside ``checkpoint.pt`` in every checkpoint folder."""
        return {}

    #: ``predict(model, inputs) -> outputs`` (lists of JSON-able values), if the task offers one: MLflow serves it.
    predict: ClassVar[Any] = None


def settings_type(task_cls: type) -> type:
    s = getattr(task_cls, "Settings", NoSettings)
    if not dataclasses.is_dataclass(s):
        raise UserError(f"task {task_cls.__name__}: Settings must be a dataclass of the task's settings")
    return s


def load_class(spec: str) -> type[Task]:
    """``lm``, ``pkg.module:Class``, ``path/to/file.py:Class`` or an entry point name -> the task class."""
    target = BUILTIN.get(spec)
    if target is None:
        from importlib.metadata import entry_points

        eps = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == spec]
        if eps:
            target = eps[0].value
    if target is None:
        target = spec
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"task {spec!r} is not a task: write a built-in name (lm), module.path:Class or "
                          "path/to/file.py:Class")
    try:
        module = _import_file(module_name) if module_name.endswith(".py") else importlib.import_module(module_name)
    except UserError:
        raise
    except ModuleNotFoundError as e:
        raise ConfigError(f"task {spec!r}: module {e.name or module_name!r} not found; install it or give a file, "
                          "e.g. task: path/to/file.py:Class") from None
    except Exception as e:  # noqa: BLE001 - the user's module failed on import: say where, in one line
        raise UserError(f"task {spec!r}: importing {module_name} failed: {type(e).__name__}: {describe(e)}") from None
    cls = getattr(module, attr, None)
    if cls is None:
        names = [n for n, v in vars(module).items() if isinstance(v, type) and issubclass(v, Task) and v is not Task]
        close = difflib.get_close_matches(attr, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else (f"; it defines {', '.join(names)}" if names else "")
        raise ConfigError(f"task {spec!r}: {module_name} has no {attr!r}{hint}")
    if not isinstance(cls, type) or not issubclass(cls, Task):
        raise ConfigError(f"task {spec!r}: {attr} is not a tracked_train.Task subclass; subclass it and implement "
                          "build_model, batch, loss and evaluate (docs/tasks.md)")
    missing = sorted(getattr(cls, "__abstractmethods__", ()))
    if missing:
        raise ConfigError(f"task {spec!r}: {attr} does not implement {', '.join(missing)} (docs/tasks.md)")
    settings_type(cls)
    return cls


def _import_file(path: str) -> Any:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"task file {path!r} does not exist; give a path to a .py file (relative to the "
                          "working folder) or an installed module")
    name = f"tracked_train_task_{p.stem}"
    if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(p.resolve()):
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, p.resolve())
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look their module up here
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def source_file(spec: str) -> Path | None:
    """The file a custom task's code lives in (shipped beside an MLflow model), None for built-ins."""
    cls = load_class(spec)
    module = sys.modules.get(cls.__module__)
    if cls.__module__.startswith("tracked_train.") or module is None or not getattr(module, "__file__", None):
        return None
    return Path(module.__file__)


def coerce_settings(spec: str, values: Mapping[str, Any], sources: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Validate ``task_args`` against the task's Settings: typed values, or one-line ConfigErrors."""
    from .typed_values import coerce_fields

    return coerce_fields(settings_type(load_class(spec)), values, "task_args.", f"task {spec}", sources)


def setting_type(spec: str, name: str) -> Any:
    """The declared type of the task's setting ``name`` (for sweep spaces); ConfigError if there is none."""
    coerce_settings(spec, {}, {})  # a task that is no task fails here with its own message
    s = settings_type(load_class(spec))
    hints = typing.get_type_hints(s)
    if name not in hints:
        coerce_settings(spec, {name: None})  # the unknown-setting error, with its did-you-mean
    return hints[name]


def defaults(spec: str) -> dict[str, Any]:
    """Every setting of the task with its value: the defaults, as ``--print-config`` and params show them."""
    from .typed_values import defaults_of

    return defaults_of(settings_type(load_class(spec)))


def build_model(task: Task) -> Any:
    """The task's model (a ``torch.nn.Module``); a task whose build fails is bad input (one line), not a crash."""
    import torch

    try:
        model = task.build_model()
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's code: name it and its error in one line
        raise UserError(f"task {task.cfg.task}: build_model failed: {type(e).__name__}: {describe(e)}") from None
    if not isinstance(model, torch.nn.Module):
        raise UserError(f"task {task.cfg.task}: build_model returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def create(cfg: Config) -> Task:
    """The task the config names, with its settings (defaults < task_args)."""
    cls = load_class(cfg.task)
    s = settings_type(cls)
    try:
        settings = s(**cfg.task_args)
    except Exception as e:  # noqa: BLE001 - a Settings __post_init__ check, say
        raise ConfigError(f"task {cfg.task}: invalid task_args ({type(e).__name__}: {describe(e)})") from None
    try:
        return cls(cfg, settings)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's constructor: one line, exit 2
        raise UserError(f"task {cfg.task}: building it failed: {type(e).__name__}: {describe(e)}") from None


def monitor_of(cfg: Config) -> tuple[str, Literal["min", "max"]]:
    """(the metric to follow, min | max): early_stopping.monitor / mode, else the task's own."""
    es = cfg.early_stopping
    cls = load_class(cfg.task)
    return es.monitor or cls.monitor, es.mode or cls.mode
