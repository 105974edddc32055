"""What your loop hands to :class:`tracked_train.Run`, checked before anything is written: its config (flattened
to the dotted params every tracker can record), the state it saves (what a weights-only load reads back), the
folder it names (new, or one a Run made); and its last checkpoint read back."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import UserError, describe

MARK = "own_loop"  # in every checkpoint a Run writes: a `tracked-train run` checkpoint is another format


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"opt": {"lr": 1e-3}}`` -> ``{"opt.lr": 1e-3}``; values must be what every tracker can record."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        if not isinstance(k, str):
            raise UserError(f"config key {prefix}{k!r} is not a string; name every setting with a string")
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{name}."))
        elif isinstance(v, (list, tuple)) and all(isinstance(x, (bool, int, float, str)) for x in v):
            out[name] = list(v)
        elif v is None or isinstance(v, (bool, int, float, str)):
            out[name] = v
        else:
            raise UserError(f"config value {name} is a {type(v).__name__}; give numbers, strings, booleans, "
                            "None, or lists or mappings of them (a tracker records nothing else)")
    return out


def check_loadable(state: Any, path: str = "state") -> None:
    """Refuse what a weights-only load cannot read back, naming where it is (before anything is written)."""
    import torch

    if isinstance(state, Mapping):
        for k, v in state.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{path} has a key of type {type(k).__name__}; use strings or integers")
            check_loadable(v, f"{path}[{k!r}]")
    elif isinstance(state, (list, tuple)):
        for i, v in enumerate(state):
            check_loadable(v, f"{path}[{i}]")
    elif not (state is None or isinstance(state, (bool, int, float, str, bytes, torch.Tensor, torch.dtype,
                                                    torch.Size, torch.device))):
        raise TypeError(f"{path} is a {type(state).__name__}: a checkpoint holds tensors, numbers, strings and "
                        "dicts / lists of them (they load weights-only); convert it, e.g. torch.as_tensor(...)")


def check_folder(run_dir: Path) -> bool:
    """True for a new folder; a folder of this API's runs continues; anything else is refused in one line."""
    from .run_folder import TRACKERS_FILE, is_run_folder

    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{run_dir} is a file, not a run folder; give the path of a folder (new or a run's)")
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return True
    if not is_run_folder(run_dir) and not (run_dir / TRACKERS_FILE).exists():
        raise UserError(f"{run_dir} holds other files and is not a run folder; give a new or empty folder, "
                        "or one a Run made")
    last = read_last(run_dir, check_only=True)
    if last is False:
        raise UserError(f"{run_dir} is a run of `tracked-train run`; continue it with `tracked-train resume "
                        f"{run_dir}`, or give another folder")
    return False


def read_last(run_dir: Path, check_only: bool = False) -> Any:
    """The last checkpoint's state (None when there is none yet; with ``check_only``, False for a checkpoint of
    another format)."""
    import pickle

    import torch

    from . import checkpoint

    folder = run_dir / "checkpoints" / "last"
    try:
        folder = checkpoint.locate(folder)
    except checkpoint.CheckpointError:
        return None
    checkpoint.verify(folder)
    try:
        state = torch.load(folder / checkpoint.STATE_FILE, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        raise checkpoint.CheckpointError(f"checkpoint {folder} refused: {describe(e)}") from None
    if not isinstance(state, dict) or not state.get(MARK) or not isinstance(state.get("step"), int):
        if check_only:
            return False
        raise checkpoint.CheckpointError(f"checkpoint {folder} is not one a Run saved")
    return True if check_only else state
