"""Model loading: the fast path for converted folders (config + one safetensors file) against
from_pretrained, and every way a model can be missing being a one-line ModelNotFoundError."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from sam.constants import CONVERTED_MARKER
from sam.core.model_loader import SHIPPED, load_model, resolve_model_dir, tensor_digest
from sam.errors import InvalidInputError, ModelNotFoundError


@pytest.fixture(autouse=True)
def _threads(one_thread):
    pass


def converted_copy(src, dest):
    """A tiny model folder marked as a sam conversion: load_model then reads it through the fast path."""
    shutil.copytree(src, dest)
    (dest / CONVERTED_MARKER).write_text(json.dumps({"gguf": "test.gguf"}))
    return dest


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_the_fast_load_of_a_converted_folder_equals_from_pretrained(tmp_path, kind, tiny_llama_dir, tiny_gpt2_dir):
    from transformers import AutoModelForCausalLM

    src = {"llama": tiny_llama_dir, "gpt2": tiny_gpt2_dir}[kind]
    fast = load_model(str(converted_copy(src, tmp_path / "m")))
    ref = AutoModelForCausalLM.from_pretrained(src).eval()
    a, b = fast.model.state_dict(), ref.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    out = fast.model.get_output_embeddings().weight
    assert out.data_ptr() == fast.model.get_input_embeddings().weight.data_ptr()  # tied, as the config says
    ids = torch.randint(3, 500, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(fast.model(input_ids=ids).logits, ref(input_ids=ids).logits)
    assert not fast.model.training and not any(p.requires_grad for p in fast.model.parameters())
    assert fast.tokenizer.pad_token is not None and fast.path == tmp_path / "m"
    assert fast.name == str(tmp_path / "m")


def test_a_converted_folder_whose_weights_do_not_match_is_refused(tmp_path, tiny_llama_dir):
    from safetensors.torch import load_file, save_file

    dest = converted_copy(tiny_llama_dir, tmp_path / "m")
    state = load_file(str(dest / "model.safetensors"))
    del state["model.layers.1.mlp.down_proj.weight"]
    save_file(state, str(dest / "model.safetensors"))
    with pytest.raises(ModelNotFoundError, match="do not match") as err:
        load_model(str(dest))
    assert "\n" not in str(err.value)


def test_bfloat16_load(tmp_path, tiny_llama_dir):
    m = load_model(str(converted_copy(tiny_llama_dir, tmp_path / "m")), dtype="bfloat16")
    assert next(m.model.parameters()).dtype == torch.bfloat16
    with pytest.raises(InvalidInputError, match="dtype"):
        load_model(str(tiny_llama_dir), dtype="float8")


def test_missing_models_are_one_line_errors(tmp_path):
    cases = [(str(tmp_path / "nowhere"), "no model at"), (str(tmp_path), "no model at"),
             (str(tmp_path / "absent.gguf"), "no GGUF file")]
    for name, match in cases:
        with pytest.raises(ModelNotFoundError, match=match) as err:
            resolve_model_dir(name, cache_dir=tmp_path / "cache")
        assert "\n" not in str(err.value)
    with pytest.raises(ModelNotFoundError, match="default"):  # the known names are listed
        resolve_model_dir("smollm-typo", cache_dir=tmp_path / "cache")
    with pytest.raises(ModelNotFoundError):
        load_model(str(tmp_path / "nowhere"))


def test_a_gguf_that_is_not_one_is_refused_and_leaves_no_half_conversion(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    cache = tmp_path / "cache"
    with pytest.raises(ModelNotFoundError, match="cannot convert"):
        resolve_model_dir(str(bad), cache_dir=cache)
    models = cache / "models"
    assert not models.exists() or not any((p / "config.json").exists() for p in models.iterdir())


def test_the_default_model_is_resolved_from_the_cache():
    from conftest import default_model_dir

    path = default_model_dir()
    assert (path / "config.json").exists() and (path / CONVERTED_MARKER).exists()
    assert SHIPPED["smollm2-135m"] is SHIPPED["default"]


def test_tensor_digest_identifies_exact_weights():
    w = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    assert tensor_digest(w) == tensor_digest(w.clone()) == tensor_digest(w.to(torch.float64))
    v = w.clone()
    v[0, 0] += 1e-6
    assert tensor_digest(v) != tensor_digest(w) and len(tensor_digest(w)) == 16
