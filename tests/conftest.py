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

from sam.bench.facts import ZSRE_SAMPLE

REPO = Path(__file__).resolve().parents[1]
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


def _build_v1_store(root: Path, rows: list[dict], identity: dict, memory_files: int = 1,
                    fingerprinter: Path | None = None) -> Path:
    """A schema-1 store (sam <= 0.1) written by hand: meta(key, value) with schema "1" and the identity keys,
    edits(..., expert, sparse = safetensors {"cols": int64 (k,), "delta": float32 (d_model, k)}), experts,
    and a memory/ folder of dense expert files. Each row: prompt, target, cols, delta, [status, steps, loss]."""
    import sqlite3

    from safetensors.torch import save as st_save

    from sam.memory.edit_mask_db import SCHEMA_V1

    root.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(root / "edits.sqlite")
    con.executescript(SCHEMA_V1)
    con.executemany("INSERT INTO meta VALUES (?, ?)", [("schema", "1")] + [(k, str(v)) for k, v in identity.items()])
    for i, r in enumerate(rows, 1):
        blob = r["sparse"] if "sparse" in r else st_save(
            {"cols": r["cols"].to(torch.int64).contiguous(), "delta": r["delta"].to(torch.float32).contiguous()})
        con.execute("INSERT INTO edits VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (i, r["prompt"], r["target"], r.get("source", "user"), "2025-01-02T03:04:05+00:00",
                     r.get("importance", 1.0), 0, r.get("status", "active"), r.get("steps", 5), r.get("loss", 0.01),
                     blob))
    con.execute("INSERT INTO experts VALUES (0, 'expert_000.0123abcd.safetensors', ?)", (len(rows),))
    con.commit()
    con.close()
    if memory_files:
        (root / "memory").mkdir()
        for e in range(memory_files):
            (root / "memory" / f"expert_{e:03d}.0123abcd.safetensors").write_bytes(b"\x00" * 256)
    if fingerprinter is not None:
        shutil.copy(fingerprinter, root / "fingerprinter.safetensors")
    return root


@pytest.fixture
def build_v1_store():
    """A function that writes a schema-1 store by hand (see _build_v1_store)."""
    return _build_v1_store
