"""torchrun support: one process per device, DistributedDataParallel, rank 0 reports.

Launched by ``torchrun`` (RANK/WORLD_SIZE/LOCAL_RANK set), every process trains
its shard of each batch with gradients averaged by DDP (gloo on CPU, nccl on
CUDA). Only rank 0 talks to trackers, prints and writes the run folder; the
others follow its decisions (run name, when to stop) through small broadcasts,
so every rank stops at the same step. Without torchrun all of this is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_current = Dist()


def current() -> Dist:
    return _current


def init() -> Dist:
    """Join the process group torchrun set up, once; returns this process's place in it."""
    global _current
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or _current.enabled:
        return _current
    import torch
    import torch.distributed as td

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        td.init_process_group("nccl")
    else:
        td.init_process_group("gloo")
    _current = Dist(td.get_rank(), td.get_world_size(), local_rank)
    return _current


def shutdown() -> None:
    global _current
    if _current.enabled:
        import torch.distributed as td

        td.destroy_process_group()
        _current = Dist()


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (pickled by torch.distributed among our own processes)."""
    if not _current.enabled:
        return obj
    import torch.distributed as td

    box = [obj]
    td.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not _current.enabled:
        return [obj]
    import torch.distributed as td

    out: list[Any] = [None] * _current.world_size
    td.all_gather_object(out, obj)
    return out


def all_reduce(values: list[float], op: str = "sum") -> list[float]:
    """Element-wise sum or max of a few floats over ranks."""
    if not _current.enabled:
        return values
    import torch
    import torch.distributed as td

    device = f"cuda:{_current.local_rank}" if torch.cuda.is_available() else "cpu"
    t = torch.tensor(values, dtype=torch.float64, device=device)
    td.all_reduce(t, op=td.ReduceOp.SUM if op == "sum" else td.ReduceOp.MAX)
    return t.tolist()
