"""The active edits as a PEFT-style adapter folder: trained weights, not questions to replay.

    adapter_config.json         {"format": "sam-adapter", "version": 1, "identity": <the store's record:
                                 model and weight digest, layer, d_ff, d_model, top_k, fingerprinter,
                                 prompt_format>, "config": <EditorConfig>, "edits": [{question, prompt, ...}]}
    adapter_model.safetensors   cols (N, k) int32, delta (N, d_model, k) fp32
    fingerprinter.safetensors   the store's TopHash permutation and background

`sam edits export` writes questions and answers, which replay (retrain) on any model; an adapter
loads bit for bit, and only into the model, layer, k and fingerprinter it was trained for.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from sam.constants import ADAPTER_CONFIG_FILE, ADAPTER_FORMAT, ADAPTER_VERSION, ADAPTER_WEIGHTS_FILE, FINGERPRINTER_FILE
from sam.errors import CorruptStoreError, InvalidInputError
from sam.memory.atomic import atomic_write

IDENTITY = ("model", "layer", "d_ff", "d_model", "top_k", "fingerprinter", "prompt_format")
TEXT_FIELDS = ("question", "prompt", "target", "source", "importance", "steps", "loss", "created")


def save_adapter(directory: Path | str, identity: dict, config: dict, records: list, cols: list[torch.Tensor],
                 deltas: list[torch.Tensor], fingerprinter: Path) -> Path:
    """Write the adapter folder; each file atomically, the config last (a folder without it is not one)."""
    directory = Path(directory)
    if (directory / ADAPTER_CONFIG_FILE).exists() or (directory.exists() and not directory.is_dir()):
        raise InvalidInputError(f"{directory} already holds an adapter (or is a file); choose a new folder")
    n = len(records)
    k = int(identity["top_k"])
    tensors = {"cols": torch.stack(cols).to(torch.int32) if n else torch.zeros(0, k, dtype=torch.int32),
               "delta": torch.stack(deltas).float().contiguous() if n else torch.zeros(0, int(identity["d_model"]), k)}
    atomic_write(directory / ADAPTER_WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp))
    atomic_write(directory / FINGERPRINTER_FILE, lambda tmp: shutil.copyfile(fingerprinter, tmp))
    doc = {"format": ADAPTER_FORMAT, "version": ADAPTER_VERSION, "identity": {f: identity[f] for f in IDENTITY},
           "config": config, "edits": [{f: getattr(r, f) for f in TEXT_FIELDS} for r in records]}
    atomic_write(directory / ADAPTER_CONFIG_FILE, lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=1)))
    return directory


def read_adapter(directory: Path | str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config document, tensors) of an adapter folder, checked for shape and consistency."""
    directory = Path(directory)
    try:
        doc = json.loads((directory / ADAPTER_CONFIG_FILE).read_text())
        tensors = load_file(str(directory / ADAPTER_WEIGHTS_FILE))
    except FileNotFoundError as e:
        raise InvalidInputError(f"{directory} is not a sam adapter: {Path(e.filename).name} is missing") from None
    except (OSError, ValueError, SafetensorError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CorruptStoreError(f"cannot read the adapter in {directory}: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != ADAPTER_FORMAT or doc.get("version") != ADAPTER_VERSION:
        raise InvalidInputError(f"{directory / ADAPTER_CONFIG_FILE} is not a {ADAPTER_FORMAT} v{ADAPTER_VERSION} file")
    n, ident = len(doc.get("edits", [])), doc.get("identity", {})
    want = {"cols": (n, int(ident["top_k"])), "delta": (n, int(ident["d_model"]), int(ident["top_k"]))}
    for name, shape in want.items():
        if name not in tensors or tuple(tensors[name].shape) != shape:
            raise CorruptStoreError(f"the adapter's {name} is not {shape} for its {n} edits")
    if not torch.isfinite(tensors["delta"]).all():
        raise CorruptStoreError("the adapter's deltas hold non-finite values")
    return doc, tensors
