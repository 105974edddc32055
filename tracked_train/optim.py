"""The optimizers of a run: AdamW, or Muon for the blocks' matrices with AdamW for the rest."""

from __future__ import annotations

import torch

from .config import TrainingConfig
from .model import hidden_matrices, param_groups


def optimizers(model: torch.nn.Module, t: TrainingConfig, kind: str) -> list[torch.optim.Optimizer]:
    """AdamW for every weight, or Muon for the blocks' matrices and AdamW for the rest (``optimizer: muon``).

    Muon's update is scaled to AdamW's size (Moonshot's ``match_rms_adamw``), so one learning rate and
    schedule serve both. The fused AdamW kernel is one call per step instead of a Python loop over
    parameters (5-8 % of a small model's CPU step, docs/benchmarks.md).
    """
    fused = kind in ("cuda", "cpu")
    if t.optimizer == "adamw":
        return [torch.optim.AdamW(param_groups(model, t.weight_decay), lr=t.lr, betas=(0.9, 0.95), fused=fused)]
    hidden, rest = hidden_matrices(model)
    rest_ids = {id(p) for p in rest}
    groups = [{**g, "params": [p for p in g["params"] if id(p) in rest_ids]}
              for g in param_groups(model, t.weight_decay)]
    return [torch.optim.Muon(hidden, lr=t.lr, weight_decay=t.weight_decay, adjust_lr_fn="match_rms_adamw"),
            torch.optim.AdamW([g for g in groups if g["params"]], lr=t.lr, betas=(0.9, 0.95), fused=fused)]
