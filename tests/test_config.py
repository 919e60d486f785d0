"""EditorConfig ranges, Settings from MEMOIR_* variables, and the checks made once the model is known."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from sam.config import EDITOR_FIELDS, KNOWN_ENV, EditorConfig, env_name, load_settings, model_cache_dir, setting_error
from sam.errors import InvalidInputError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No MEMOIR_* / SAM_* variable of the calling shell leaks into these tests."""
    import os

    for k in list(os.environ):
        if k.startswith(("MEMOIR_", "SAM_")):
            monkeypatch.delenv(k)


def upper(field: str) -> float:
    """The field's inclusive upper bound, read from the model (so a changed default range is followed)."""
    return next(m.le for m in EditorConfig.model_fields[field].metadata if hasattr(m, "le"))


LR_MAX = upper("learning_rate")

# (field, refused value as the environment gives it, a value just inside the range)
BAD = [
    ("similarity_threshold", "0", "1.0"),
    ("similarity_threshold", "-0.1", "0.01"),
    ("similarity_threshold", "1.01", "1"),
    ("similarity_threshold", "nan", "0.5"),
    ("mask_overlap", "0", "1.0"),
    ("mask_overlap", "1.5", "0.01"),
    ("key", "minilm", "tophash"),
    ("top_k", "0", "1"),
    ("top_k", "-4", "1"),
    ("top_k", "2.5", "3"),
    ("learning_rate", "0", "1e-6"),
    ("learning_rate", "-1", "0.5"),
    ("learning_rate", "nan", "1"),
    ("learning_rate", "inf", repr(LR_MAX)),
    ("learning_rate", repr(LR_MAX * 10), repr(LR_MAX)),
    ("max_steps", "0", "1"),
    ("max_steps", "1001", "1000"),
    ("max_steps", "abc", "7"),
    ("stop_loss", "0", "0.001"),
    ("stop_loss", "inf", "10"),
    ("stop_loss", "11", "10"),
    ("n_prefixes", "-1", "0"),
    ("n_prefixes", "9", "8"),
    ("prefix_tokens", "0", "1"),
    ("prefix_tokens", "33", "32"),
    ("max_target_tokens", "0", "1"),
    ("max_target_tokens", "513", "512"),
    ("max_prompt_tokens", "7", "8"),
    ("max_prompt_tokens", "32769", "32768"),
    ("seed", "-1", "0"),
    ("layer", "-1", "0"),
    ("fast", "maybe", "false"),
    ("train_dtype", "float16", "bfloat16"),
]


@pytest.mark.parametrize("field,bad,good", BAD)
def test_every_editor_range_is_refused_from_the_environment_with_its_name(monkeypatch, field, bad, good):
    monkeypatch.setenv(env_name(field), bad)
    with pytest.raises(ValidationError) as err:
        load_settings()
    msg = setting_error(err.value)
    assert msg.startswith(f"invalid setting {env_name(field)} (--{field.replace('_', '-')})"), msg
    assert repr(bad) in msg and "\n" not in msg
    monkeypatch.setenv(env_name(field), good)  # the edge of the range is allowed
    assert getattr(load_settings().editor, field) == EditorConfig.model_validate({field: good}).__getattribute__(field)


@pytest.mark.parametrize("field,bad,good", BAD)
def test_every_editor_range_is_refused_in_python_too(field, bad, good):
    value = {"fast": "maybe", "train_dtype": "float16", "key": "minilm"}.get(field)
    if value is None:
        value = float(bad) if field in ("similarity_threshold", "mask_overlap", "learning_rate", "stop_loss") \
            or "." in bad \
            else (int(bad) if bad.lstrip("-").isdigit() else bad)
    with pytest.raises(ValidationError) as err:
        EditorConfig(**{field: value})
    assert setting_error(err.value).startswith(f"invalid setting {env_name(field)}")


def test_defaults_and_every_field_has_an_env_name():
    cfg = EditorConfig()
    assert (cfg.top_k, cfg.max_steps, cfg.layer, cfg.key) == (128, 30, None, "sentence")
    assert 0 < cfg.learning_rate <= LR_MAX and 0 < cfg.similarity_threshold <= 1 and 0 < cfg.mask_overlap <= 1
    assert cfg.resolved_layer(30) == 25 and cfg.resolved_layer(3) == 2 and EditorConfig(layer=1).resolved_layer(30) == 1
    assert {env_name(f) for f in EDITOR_FIELDS} <= KNOWN_ENV
    assert env_name("top_k") == "MEMOIR_TOP_K"
    with pytest.raises(ValidationError):
        EditorConfig(topk=3)  # extra fields are refused
    with pytest.raises(ValidationError):
        cfg.top_k = 3  # frozen


def test_an_unknown_memoir_variable_is_refused(monkeypatch):
    monkeypatch.setenv("MEMOIR_TOPK", "64")  # misspelt: must not silently do nothing
    with pytest.raises(InvalidInputError, match="MEMOIR_TOPK") as err:
        load_settings()
    assert "MEMOIR_TOP_K" in str(err.value)  # the known names are listed
    monkeypatch.delenv("MEMOIR_TOPK")
    monkeypatch.setenv("MEMOIR_EDITOR", '{"top_k": 3}')  # the nested form is not a name sam documents
    with pytest.raises(InvalidInputError, match="MEMOIR_EDITOR"):
        load_settings()
    monkeypatch.delenv("MEMOIR_EDITOR")
    monkeypatch.setenv("OTHER_TOPK", "1")  # other prefixes are not sam's business
    load_settings()


def test_env_and_explicit_overrides_merge_with_the_editor_nested(monkeypatch, tmp_path):
    monkeypatch.setenv("MEMOIR_MAX_STEPS", "5")
    monkeypatch.setenv("MEMOIR_TOP_K", "64")
    monkeypatch.setenv("MEMOIR_MODEL", "gemma3-270m")
    monkeypatch.setenv("MEMOIR_FAST", "false")
    monkeypatch.setenv("SAM_HOME", str(tmp_path / "home"))
    s = load_settings(editor={"top_k": 8, "learning_rate": 0.5}, device="cuda:0")
    assert (s.editor.top_k, s.editor.learning_rate, s.editor.max_steps, s.editor.fast) == (8, 0.5, 5, False)
    assert (s.model, s.device, s.storage_dir) == ("gemma3-270m", "cuda:0", tmp_path / "home")
    s = load_settings(model="default", storage_dir=tmp_path / "explicit")
    assert (s.model, s.storage_dir, s.editor.top_k) == ("default", tmp_path / "explicit", 64)
    monkeypatch.setenv("MEMOIR_STORAGE_DIR", str(tmp_path / "memoir"))
    monkeypatch.delenv("SAM_HOME")
    assert load_settings().storage_dir == tmp_path / "memoir"


def test_an_override_is_validated_like_the_environment(monkeypatch):
    with pytest.raises(ValidationError) as err:
        load_settings(editor={"top_k": 0})
    assert setting_error(err.value).startswith("invalid setting MEMOIR_TOP_K (--top-k)=0")
    with pytest.raises(ValidationError) as err:
        load_settings(min_edit_confidence=1.5)
    assert setting_error(err.value).startswith("invalid setting MEMOIR_MIN_EDIT_CONFIDENCE=1.5")
    with pytest.raises(ValidationError) as err:
        load_settings(prompt_format="chatty")
    assert "MEMOIR_PROMPT_FORMAT" in setting_error(err.value)
    with pytest.raises(ValidationError):
        load_settings(no_such_option=1)


def test_process_settings_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MEMOIR_PROMPT_FORMAT", "qa")
    monkeypatch.setenv("MEMOIR_MIN_EDIT_CONFIDENCE", "0.9")
    monkeypatch.setenv("SAM_MODEL_CACHE", str(tmp_path / "cache"))
    s = load_settings()
    assert (s.prompt_format, s.min_edit_confidence, s.model_cache) == ("qa", 0.9, tmp_path / "cache")
    assert s.models_dir() == tmp_path / "cache" / "models"
    assert model_cache_dir() == tmp_path / "cache" and model_cache_dir(tmp_path / "x") == tmp_path / "x"
    monkeypatch.setenv("MEMOIR_MIN_EDIT_CONFIDENCE", "nan")
    with pytest.raises(ValidationError) as err:
        load_settings()
    assert setting_error(err.value).startswith("invalid setting MEMOIR_MIN_EDIT_CONFIDENCE='nan'")


def test_memoir_model_cache_is_not_silently_ignored(monkeypatch, tmp_path):
    monkeypatch.setenv("MEMOIR_MODEL_CACHE", str(tmp_path / "c"))
    try:
        s = load_settings()
    except InvalidInputError:
        return  # refused: also fine
    assert s.model_cache == tmp_path / "c"


# --- checked when the model is known (tiny Llama: 3 layers, d_ff 128) -------------------------------------------
@pytest.mark.parametrize("cfg,match", [(EditorConfig(top_k=129), "top_k 129 is larger"),
                                       (EditorConfig(layer=3), "out of range"),
                                       (EditorConfig(layer=99, top_k=4), "out of range")])
def test_top_k_above_d_ff_and_a_layer_past_the_depth_are_refused_at_open(tmp_path, tiny_llama_dir, cfg, match,
                                                                          one_thread):
    from sam.core.editor import MemoirEditor

    store = tmp_path / "store"
    with pytest.raises(InvalidInputError, match=match) as err:
        MemoirEditor.open(store, model=str(tiny_llama_dir), config=cfg)
    assert "\n" not in str(err.value)
    # the refused open kept no lock and left no half-made store behind: the right settings open it as new
    with MemoirEditor.open(store, model=str(tiny_llama_dir), config=EditorConfig(layer=2, top_k=128)) as ed:
        assert ed.store.created and ed.layer == 2 and ed.fingerprinter.top_k == 128
