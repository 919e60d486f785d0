"""Persistence without pickle: weights and memory states in safetensors, configs in JSON.

    save_model(model, dir)   -> dir/model.safetensors + dir/config.json
    load_model(dir)          -> MemNet, bit-identical outputs
    save_state(state, path, config) / load_state(path, config) -> MemoryState; refuses a state of another shape
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model as _load_weights, save_file, save_model as _save_weights

from sam.errors import CorruptStoreError, InvalidInputError, StoreMismatchError

from .config import MemNetConfig, MemoryConfig
from .memory import MemoryState
from .model import MemNet

_FORMAT = "sam.memnet/1"


def save_model(model: MemNet, directory: str | Path) -> Path:
    if not isinstance(model, MemNet):
        raise InvalidInputError(f"save_model takes a MemNet, got {type(model).__name__}")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    _save_weights(model, str(d / "model.safetensors"), metadata={"format": _FORMAT})  # tied weights stored once
    (d / "config.json").write_text(json.dumps(dict(format=_FORMAT, config=model.config.to_dict()), indent=1))
    return d


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> MemNet:
    d = Path(directory)
    try:
        meta = json.loads((d / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise CorruptStoreError(f"cannot read {d / 'config.json'}: {e}") from None
    if meta.get("format") != _FORMAT:
        raise CorruptStoreError(f"{d} is not a saved MemNet (format {meta.get('format')!r})")
    model = MemNet(MemNetConfig.from_dict(meta["config"]))
    try:
        missing, unexpected = _load_weights(model, str(d / "model.safetensors"), strict=False, device=str(device))
    except (OSError, SafetensorError, RuntimeError) as e:
        raise CorruptStoreError(f"cannot load {d / 'model.safetensors'}: {e}") from None
    if missing or unexpected:
        raise StoreMismatchError(f"weights do not match the config: missing {missing}, unexpected {unexpected}")
    return model.to(device).eval()


def save_state(state: MemoryState, path: str | Path, config: MemoryConfig) -> Path:
    """Writes a memory state (so memory can persist across processes) tagged with the slot shape it belongs to."""
    if not isinstance(state, MemoryState):
        raise InvalidInputError(f"save_state takes a MemoryState, got {type(state).__name__}")
    if tuple(state.memory.shape[1:]) != (config.n_slots, config.slot_dim):
        raise StoreMismatchError("the state does not belong to this memory config")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in state.tensors().items()}, str(p),
              metadata={"format": _FORMAT + "/state", "config": json.dumps(config.to_dict())})
    return p


def load_state(path: str | Path, config: MemoryConfig, device: str | torch.device = "cpu") -> MemoryState:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        t = load_file(str(path), device=str(device))
    except (OSError, SafetensorError) as e:
        raise CorruptStoreError(f"cannot read memory state {path}: {e}") from None
    if meta.get("format") != _FORMAT + "/state" or set(t) != {"memory", "usage", "age"}:
        raise CorruptStoreError(f"{path} is not a saved MemNet memory state")
    saved = json.loads(meta["config"])
    if (saved.get("n_slots"), saved.get("slot_dim")) != (config.n_slots, config.slot_dim):
        raise StoreMismatchError(f"memory state was saved for {saved.get('n_slots')} x {saved.get('slot_dim')} slots, "
                                 f"this config has {config.n_slots} x {config.slot_dim}")
    return MemoryState(t["memory"], t["usage"], t["age"])
