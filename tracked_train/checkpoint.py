"""Atomic, verifiable checkpoint folders.

A checkpoint is a folder (``checkpoints/last``, ``checkpoints/best``) holding
``checkpoint.pt`` (everything needed to resume: model, optimizer, scaler,
early-stopping state, RNG states, data position, config, tokenizer),
``config.yaml`` and ``tokenizer.model`` for people and other tools, and
``manifest.json`` with the sha256 of every file, written last.

Writing never exposes a half-written checkpoint: the new folder is built as
``.last.tmp`` (each file fsynced, the manifest last), then swapped in with two
renames (``last`` -> ``.last.old``, ``.last.tmp`` -> ``last``) and the parent
folder fsynced. A kill between the renames leaves a complete ``.last.tmp``,
which :func:`locate` promotes. Loading checks the manifest first and always
unpickles with ``weights_only=True``: a checkpoint may come from a shared
artifact store and is untrusted.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from .errors import CheckpointError, NoCheckpoint

__all__ = ["CheckpointError", "clean", "config_of", "find", "load", "load_weights", "locate", "named", "periodic",
           "prune", "save", "save_copy", "step_name", "verify"]

STATE_FILE = "checkpoint.pt"
MANIFEST = "manifest.json"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("step", "loop", "model", "optimizer", "scaler", "early_stopping", "rng", "config", "task_state")
STEP_PREFIX = "step-"  # periodic checkpoints (training.keep_checkpoints): checkpoints/step-000500
_STEP_NAME = re.compile(r"step-(\d+)")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _disk_full(path: Path) -> bool:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize < 1 << 20


def save(folder: Path, state: dict[str, Any], files: dict[str, bytes]) -> None:
    """Atomically replace ``folder`` with a checkpoint of ``state`` plus ``files``."""
    import torch

    folder = Path(folder)
    parent = folder.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".{folder.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        with open(tmp / STATE_FILE, "wb") as f:
            try:
                torch.save(state, f)
            except RuntimeError as e:  # torch's zip writer reports a full disk as "unexpected pos"
                if _disk_full(tmp):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp / STATE_FILE)) from None
                raise e
            f.flush()
            os.fsync(f.fileno())
        for name, data in files.items():
            _write_bytes(tmp / name, data)
        manifest = {
            "format_version": FORMAT_VERSION,
            "step": state.get("step"),
            "files": {p.name: {"sha256": _sha256(p), "bytes": p.stat().st_size} for p in sorted(tmp.iterdir())},
        }
        _write_bytes(tmp / MANIFEST, json.dumps(manifest, indent=1).encode())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk: free what we took, keep the previous checkpoint
        raise
    _swap_in(tmp, folder)


def _swap_in(tmp: Path, folder: Path) -> None:
    """Replace ``folder`` by the complete folder ``tmp``: two renames, then fsync the parent."""
    _fsync_dir(tmp)
    old = folder.parent / f".{folder.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    _fsync_dir(folder.parent)
    shutil.rmtree(old, ignore_errors=True)


def _manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"checkpoint {folder} has no {MANIFEST}: it is incomplete or not a checkpoint; "
                              "resume from another checkpoint")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise CheckpointError(f"checkpoint {folder}: {MANIFEST} is damaged; resume from another checkpoint") from None


def verify(folder: Path) -> dict:
    """Check every file against the manifest; return the manifest."""
    manifest = _manifest(folder)
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not all(
            isinstance(m, dict) and isinstance(m.get("bytes"), int) and isinstance(m.get("sha256"), str)
            for m in files.values()):
        raise CheckpointError(f"checkpoint {folder}: {MANIFEST} is malformed; resume from another checkpoint")
    for name, meta in files.items():
        p = folder / name
        if Path(name).name != name:
            raise CheckpointError(f"checkpoint {folder}: manifest names a path outside the folder ({name!r}); refused")
        if not p.is_file():
            raise CheckpointError(f"checkpoint {folder} is missing {name}; resume from another checkpoint")
        if p.stat().st_size != meta["bytes"] or _sha256(p) != meta["sha256"]:
            raise CheckpointError(f"checkpoint {folder}: {name} does not match its manifest (truncated or "
                                  "modified); resume from another checkpoint, e.g. checkpoints/best")
    if STATE_FILE not in manifest.get("files", {}):
        raise CheckpointError(f"checkpoint {folder}: manifest does not list {STATE_FILE}; "
                              "not a tracked-train checkpoint")
    return manifest


def locate(folder: Path) -> Path:
    """The checkpoint folder to read, finishing a swap that a kill interrupted."""
    folder = Path(folder)
    if folder.exists():
        return folder
    tmp, old = folder.parent / f".{folder.name}.tmp", folder.parent / f".{folder.name}.old"
    if _STEP_NAME.fullmatch(folder.name):
        old = folder.parent / ".never"  # a periodic checkpoint's .old may be one pruning cut half-way: never restored
    if (tmp / MANIFEST).is_file():
        try:
            verify(tmp)
            os.replace(tmp, folder)
            return folder
        except CheckpointError:
            pass
    if old.exists():
        os.replace(old, folder)
        return folder
    raise NoCheckpoint(f"no checkpoint at {folder}; the run has not saved one yet")


def load(folder: Path) -> dict[str, Any]:
    """Verify and load ``checkpoint.pt`` from a checkpoint folder (never executing pickled code)."""
    import pickle

    import torch

    folder = locate(folder)
    verify(folder)
    try:
        state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        from .errors import describe

        raise CheckpointError(f"checkpoint {folder} refused: {describe(e)}") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {folder} is not a tracked-train checkpoint of format {FORMAT_VERSION}")
    if "task_state" not in state and isinstance(state.get("tokenizer"), torch.Tensor):
        state["task_state"] = {"tokenizer": state.pop("tokenizer")}  # the language model's, before tasks existed
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if (missing or not isinstance(state.get("step"), int) or not isinstance(state.get("model"), dict)
            or not isinstance(state.get("task_state"), dict)):
        what = f"lacks {', '.join(missing)}" if missing else "has a malformed step, model or task state"
        raise CheckpointError(f"checkpoint {folder} {what}; it is damaged or not a tracked-train checkpoint")
    config_of(state, folder)
    return state


# What a config saved before model.pos_encoding & co. existed describes: the GPT-2 design.
GPT2_DESIGN = {"pos_encoding": "learned", "norm": "layernorm", "mlp": "gelu", "qk_norm": False,
               "tie_embeddings": True}


def config_of(state: dict[str, Any], where: Path | str = "the checkpoint") -> Any:
    """The checkpoint's config, or CheckpointError when it is not a valid one."""
    from .config import from_dict
    from .errors import ConfigError
    from .names import problem, sanitise

    try:
        nested = {sec: vals if sec == "task" else dict(vals) for sec, vals in state["config"].items()}
        if nested.get("task", "lm") == "lm":  # saved before the switches existed
            nested["model"] = {**GPT2_DESIGN, **nested.get("model", {})}
        nested["training"] = {"optimizer": "adamw", **nested.get("training", {})}
        name = nested.get("run", {}).get("name")
        if isinstance(name, str) and problem(name):  # names a folder: never trust one from elsewhere
            nested["run"]["name"] = sanitise(name)
        return from_dict(nested)
    except (ConfigError, TypeError, AttributeError, KeyError, ValueError) as e:
        from .errors import describe

        raise CheckpointError(f"checkpoint {where} holds an invalid config ({describe(e)}); "
                              "it is damaged or from another program") from None


def load_weights(model: Any, weights: dict[str, Any], where: Path | str = "the checkpoint") -> None:
    """``model.load_state_dict`` that turns a mismatch into one line naming the checkpoint."""
    try:
        model.load_state_dict(weights)
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        from .errors import describe

        what = str(where) if str(where).startswith("the ") else f"checkpoint {where}"
        raise CheckpointError(f"{what}: its weights do not fit the model its config describes "
                              f"({describe(e, 200)}); a setting that shapes the model changed since it was saved "
                              "(start a new run for that), or it is damaged") from None


def restore_task(state: dict[str, Any], where: Path | str = "the checkpoint") -> tuple[Any, Any]:
    """(model in eval mode, task) of a :func:`load`-ed state: the task its config names, its model, its weights."""
    from . import task as tasks
    from .task import build_model

    task = tasks.create(config_of(state, where))
    task.load_state(state["task_state"])
    model = build_model(task)
    load_weights(model, state["model"], where)
    return model.eval(), task


def restore_model(state: dict[str, Any], where: Path | str = "the checkpoint") -> tuple[Any, Any]:
    """(model in eval mode, tokenizer) of a language model's :func:`load`-ed state."""
    model, task = restore_task(state, where)
    if task.cfg.task != "lm":
        raise CheckpointError(f"checkpoint {where} is of task {task.cfg.task}, not a language model; "
                              "use tracked_train.load, which returns any task's model")
    return model, task.tokenizer


def clean(checkpoints: Path) -> None:
    """Remove what an interrupted save left (``.last.tmp``, ``.best.old``) once the checkpoint it shadows is whole,
    and what an interrupted pruning left (``.step-000100.old``: gone whatever it holds)."""
    for leftover in list(Path(checkpoints).glob(".*.tmp")) + list(Path(checkpoints).glob(".*.old")):
        name = leftover.name[1:].rsplit(".", 1)[0]
        try:
            locate(Path(checkpoints) / name)  # promotes a complete .tmp when the swap was cut
        except CheckpointError:
            if not _STEP_NAME.fullmatch(name):
                continue
        if leftover.exists():
            shutil.rmtree(leftover, ignore_errors=True)


def step_name(step: int) -> str:
    """The folder name of step ``step``'s periodic checkpoint: ``step-000500``."""
    return f"{STEP_PREFIX}{step:06d}"


def periodic(checkpoints: Path) -> list[tuple[int, Path]]:
    """The periodic checkpoints in ``checkpoints`` as (step, folder), oldest first."""
    found = []
    for path in Path(checkpoints).glob(f"{STEP_PREFIX}*"):
        m = _STEP_NAME.fullmatch(path.name)
        if m and path.is_dir():
            found.append((int(m.group(1)), path))
    return sorted(found)


def prune(checkpoints: Path, keep: int, hook: Any = None) -> list[int]:
    """Remove all but the ``keep`` newest periodic checkpoints, oldest first; returns the steps removed.

    Each goes in two moves: renamed to a hidden ``.step-000100.old`` (atomic; the parent fsynced), then deleted.
    A kill between or during them leaves a hidden leftover that :func:`clean` removes, never a half-deleted
    folder under a checkpoint's name. ``hook(folder)``, for tests, runs between the two moves.
    """
    removed = []
    for step, path in periodic(checkpoints)[:-keep] if keep > 0 else periodic(checkpoints):
        gone = path.parent / f".{path.name}.old"
        shutil.rmtree(gone, ignore_errors=True)
        os.replace(path, gone)
        _fsync_dir(path.parent)
        if hook is not None:
            hook(gone)
        shutil.rmtree(gone, ignore_errors=True)
        removed.append(step)
    return removed


def find(checkpoints: Path, which: str) -> Path:
    """The folder ``--from WHICH`` names: ``last``, ``best``, or a periodic one as ``step-500`` / ``step-000500``.

    A step with no checkpoint is bad input: :class:`CheckpointError` names the steps there are.
    """
    name = named(which)
    folder = Path(checkpoints) / name
    if name in ("last", "best") or folder.is_dir():
        return folder
    have = ", ".join(f"step-{s}" for s, _ in periodic(checkpoints)) or "none (training.keep_checkpoints unset?)"
    step = int(name[len(STEP_PREFIX):])
    raise CheckpointError(f"--from step-{step}: {checkpoints} has no checkpoint of step {step}; "
                          f"the periodic ones there: {have}")


def named(which: str) -> str:
    """``last``, ``best``, or ``step-500`` / ``step-000500`` as its folder's name (``step-000500``)."""
    from .errors import UserError

    if which in ("last", "best"):
        return which
    m = _STEP_NAME.fullmatch(which)
    if m is None:
        raise UserError(f"--from {which!r}: write last, best or step-N (e.g. step-500)")
    return step_name(int(m.group(1)))


def save_copy(src: Path, dest: Path) -> None:
    """Install a verified checkpoint folder ``src`` at ``dest``, swapped in atomically like :func:`save`."""
    verify(src)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    _swap_in(tmp, dest)
