"""Typed, frozen run configuration: defaults < YAML < environment < --set.

Every key is a dotted ``section.field`` name; YAML sections map to the
dataclasses below, ``--set training.lr=3e-4`` and
``TRACKED_TRAIN_TRAINING_LR=3e-4`` address the same field. Validation happens
here, before anything is created, and fails with a :class:`ConfigError` whose
message is one line naming the key, the bad value and what is allowed. A
misspelt ``TRACKED_TRAIN_*`` variable is such an error too, not ignored.
MLflow's ``MLFLOW_EXPERIMENT_NAME`` names the experiment when nothing else does.

The package by job: :mod:`.sections` (the dataclasses and key names), :mod:`.keys` (``--set`` and YAML),
:mod:`.environment` (``TRACKED_TRAIN_*`` variables), :mod:`.layers` (precedence, validation, recorded configs).
Callers import from here.
"""

from .environment import ENV_PREFIX, NOT_CONFIG_ENV, check_env, env_name, env_overrides
from .keys import DEPRECATED_KEYS, load_yaml, parse_assignment
from .layers import QUIET_SOURCES, build, dump_yaml, from_dict, resolve, to_yaml, validate
from .sections import (
    FIELDS,
    LM_SECTIONS,
    MODEL_SHAPE_KEYS,
    SECTIONS,
    TASK_ARGS,
    Config,
    ConsoleConfig,
    DataConfig,
    EarlyStoppingConfig,
    LoggingConfig,
    ModelConfig,
    RunConfig,
    TokenizerConfig,
    TrackingConfig,
    TrainingConfig,
    tracker_key,
)

__all__ = [
    "DEPRECATED_KEYS", "ENV_PREFIX", "FIELDS", "LM_SECTIONS", "MODEL_SHAPE_KEYS", "NOT_CONFIG_ENV", "QUIET_SOURCES",
    "SECTIONS", "TASK_ARGS", "Config", "ConsoleConfig", "DataConfig", "EarlyStoppingConfig", "LoggingConfig",
    "ModelConfig", "RunConfig", "TokenizerConfig", "TrackingConfig", "TrainingConfig", "build", "check_env",
    "dump_yaml", "env_name", "env_overrides", "from_dict", "load_yaml", "parse_assignment", "resolve", "to_yaml",
    "tracker_key", "validate",
]
