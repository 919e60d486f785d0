"""Shared fixtures: tiny randomly initialised causal LMs saved as HF folders, and the zsRE sample.

The tiny models borrow the default model's tokenizer (SmolLM2's, 49152 tokens) so that
`MemoirEditor.open(store, model=<folder>)` loads them like any HF model folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
ZSRE_SAMPLE = REPO / "data" / "zsre_sample.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
TINY_D_FF = 128  # both tiny models: the same down-projection width, different architectures


def default_model_dir() -> Path:
    from sam.core.model_loader import resolve_model_dir

    return resolve_model_dir("default", Path.home() / ".cache" / "sam")


def tiny_config(kind: str, vocab_size: int):
    from transformers import GPT2Config, LlamaConfig

    if kind == "llama":
        return LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=TINY_D_FF, num_hidden_layers=3,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                           tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    if kind == "gpt2":
        return GPT2Config(vocab_size=vocab_size, n_embd=64, n_inner=TINY_D_FF, n_layer=2, n_head=4, n_positions=256,
                          bos_token_id=1, eos_token_id=2, pad_token_id=2)
    raise ValueError(kind)


def build_tiny_model(kind: str, out: Path, seed: int = 0) -> Path:
    """A randomly initialised model of `kind`, saved with the default model's tokenizer to `out`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = default_model_dir()
    tok = AutoTokenizer.from_pretrained(src)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(kind, len(tok)))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (src / name).exists():
            shutil.copy(src / name, out / name)
    return out


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    return build_tiny_model("llama", tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory) -> Path:
    return build_tiny_model("gpt2", tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def zsre() -> list[dict]:
    """The committed zsRE sample (200 records; 54 and 103 have an empty `alt`)."""
    return json.loads(ZSRE_SAMPLE.read_text())


@pytest.fixture(scope="module")
def one_thread():
    """Small-op tests on 2 shared cores: intra-op threads fighting other processes made them ~10x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
