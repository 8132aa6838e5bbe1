"""Resumable training state: model/optimizer tensors in safetensors, counters and RNG in JSON.

Written atomically every N steps, so a run killed at any moment resumes from its last save and,
because batches depend only on (seed, step), ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from ..errors import DigaError
from ..io import atomic_path, atomic_write_json

STATE_TENSORS = "train_state.safetensors"
STATE_INFO = "train_state.json"


def save_train_state(folder: str | Path, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer | None,
                     info: dict[str, Any], extra_tensors: dict[str, torch.Tensor] | None = None) -> None:
    """Save module state dicts, optimizer buffers, torch's RNG state and `info` (step, ...) into `folder`."""
    folder = Path(folder)
    tensors: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        for k, v in module.state_dict().items():
            tensors[f"{name}.{k}"] = v.detach().cpu().contiguous()
    opt_groups = None
    if optimizer is not None:
        sd = optimizer.state_dict()
        for pid, pstate in sd["state"].items():
            for k, v in pstate.items():
                if torch.is_tensor(v):
                    tensors[f"optim.{pid}.{k}"] = v.detach().cpu().contiguous()
        opt_groups = sd["param_groups"]
    tensors["rng.torch"] = torch.get_rng_state()
    for k, v in (extra_tensors or {}).items():
        tensors[f"extra.{k}"] = v.detach().cpu().contiguous()
    with atomic_path(folder / STATE_TENSORS) as tmp:
        save_file(tensors, str(tmp))
    atomic_write_json(folder / STATE_INFO, {**info, "optim_param_groups": opt_groups})


def has_train_state(folder: str | Path) -> bool:
    return (Path(folder) / STATE_INFO).is_file() and (Path(folder) / STATE_TENSORS).is_file()


def load_train_state(folder: str | Path, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer | None
                     ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Restore what `save_train_state` wrote; returns (info, extra tensors)."""
    folder = Path(folder)
    try:
        info = json.loads((folder / STATE_INFO).read_text())
        tensors = load_file(str(folder / STATE_TENSORS))
    except (OSError, ValueError) as exc:
        raise DigaError(f"training state in {folder} is unreadable ({exc}); delete it to start over") from None
    for name, module in modules.items():
        prefix = f"{name}."
        module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    if optimizer is not None and info.get("optim_param_groups") is not None:
        state: dict[int, dict[str, torch.Tensor]] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, pid, key = k.split(".", 2)
                state.setdefault(int(pid), {})[key] = v
        optimizer.load_state_dict({"state": state, "param_groups": info["optim_param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    extra = {k[len("extra."):]: v for k, v in tensors.items() if k.startswith("extra.")}
    return info, extra
