"""sam's settings: one validated pydantic model per concern, read once, with one name per knob.

`EditorConfig` holds the editing knobs. Its field names are the names everywhere: the Python API
(`EditorConfig(top_k=64)`), the environment (`MEMOIR_TOP_K=64`), the CLI (`--top-k 64`) and the
benchmark. `Settings` (pydantic-settings) nests it beside the process-wide options and reads both
from the environment; a bad value is refused at load with the variable's name and the allowed range.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from sam.constants import MODELS_SUBDIR

ENV_PREFIX = "MEMOIR_"


class EditorConfig(BaseModel):
    """How edits are keyed, trained and routed. Every field is checked when the config is built;
    `top_k <= d_ff` and `layer < depth` are checked when the model is known (at open)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    layer: int | None = Field(None, ge=0, description="Decoder layer whose FFN down-projection gets the memory "
                              "(default: 85% of the depth, layer 25 of SmolLM2's 30).")
    top_k: int = Field(128, ge=1, description="Memory columns per edit (TopHash k), at most the layer's d_ff.")
    key: Literal["sentence", "tophash"] = Field(
        "sentence", description="How a question finds its edit: sentence (MiniLM cosine of the question texts, "
                                "with a name check) or tophash (MEMOIR's mask overlap of the memory layer's input).")
    similarity_threshold: float = Field(0.8, gt=0.0, le=1.0, description="Key cosine at which an edit fires "
                                        "(key=sentence).")
    template_threshold: float = Field(0.5, ge=-1.0, le=1.0, description="Cosine of the questions with their names "
                                      "masked, needed too: what is asked must match (key=sentence).")
    supersede_threshold: float = Field(0.8, ge=-1.0, le=1.0, description="Template cosine a new edit's question "
                                       "needs with an active edit's before it replaces it (key=sentence): removing a "
                                       "fact needs more certainty than choosing which fact fires.")
    mask_overlap: float = Field(0.45, gt=0.0, le=1.0, description="Mask overlap at which an edit fires (key=tophash).")
    learning_rate: float = Field(0.1, gt=0.0, le=10.0, allow_inf_nan=False,
                                 description="Adam learning rate of an edit's delta.")
    max_steps: int = Field(30, ge=1, le=1000, description="Most optimisation steps per edit.")
    stop_loss: float = Field(0.05, gt=0.0, le=10.0, allow_inf_nan=False,
                             description="Stop once the mean target NLL is below this.")
    n_prefixes: int = Field(2, ge=0, le=8, description="Extra training copies behind short model-written prefixes.")
    prefix_tokens: int = Field(6, ge=1, le=32, description="Tokens per training prefix.")
    max_target_tokens: int = Field(64, ge=1, le=512, description="Longest answer an edit may teach, in tokens.")
    max_prompt_tokens: int = Field(1024, ge=8, le=32768, description="Longest prompt (question and its "
                                   "conversation) the model is given, in tokens; older turns are dropped first.")
    seed: int = Field(0, ge=0, description="Seeds the TopHash permutation and the training prefixes.")
    fast: bool = Field(True, description="Cache the layers below the edited one while training (False: naive loop).")
    train_dtype: Literal["auto", "bfloat16", "float32"] = Field(
        "auto", description="Precision of the frozen model's products while an edit trains (lm_head's copy; on a "
                            "CPU with oneDNN also the layers' reordered weights): auto (bf16 where fast), bfloat16, "
                            "float32 (the model's own products, to float rounding).")

    def resolved_layer(self, depth: int) -> int:
        return self.layer if self.layer is not None else int(round(0.85 * (depth - 1)))


EDITOR_FIELDS = tuple(EditorConfig.model_fields)


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def default_home() -> Path:
    return Path.home() / ".sam"


def default_model_cache() -> Path:
    return Path.home() / ".cache" / "sam"


class _FlatEditorEnv(PydanticBaseSettingsSource):
    """Reads MEMOIR_<FIELD> for every EditorConfig field into `editor` (so MEMOIR_TOP_K, not
    MEMOIR_EDITOR__TOP_K): the names the README gives."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        values = {f: os.environ[env_name(f)] for f in EDITOR_FIELDS if env_name(f) in os.environ}
        return {"editor": values} if values else {}


class Settings(BaseSettings):
    """Process-wide settings. Environment names: SAM_HOME, SAM_MODEL_CACHE, MEMOIR_MODEL, MEMOIR_DEVICE,
    MEMOIR_PROMPT_FORMAT, MEMOIR_MIN_EDIT_CONFIDENCE, and MEMOIR_<FIELD> for each EditorConfig field."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    storage_dir: Path = Field(default_factory=default_home,
                              validation_alias=AliasChoices("storage_dir", "SAM_HOME", "MEMOIR_STORAGE_DIR"),
                              description="The store folder: edits, their memory, learned plans.")
    model_cache: Path = Field(default_factory=default_model_cache,
                              validation_alias=AliasChoices("model_cache", "SAM_MODEL_CACHE"),
                              description="Where converted models are cached.")
    model: str = Field("default", min_length=1, description="'default' (SmolLM2-135M-Instruct), 'gemma3-270m', "
                       "a local HF model folder or a .gguf file.")
    device: str = Field("cpu", min_length=1, description="torch device: cpu, cuda, cuda:0 ...")
    prompt_format: Literal["auto", "chat", "line", "qa", "raw"] = Field(
        "auto", description="How a question is framed: auto (the model's chat template when it has one, else "
                            "line), chat, line (question + newline), qa ('Question: ..\\nAnswer:') or raw.")
    min_edit_confidence: float = Field(0.5, ge=0.0, le=1.0, allow_inf_nan=False,
                                       description="Feedback read with less confidence than this is not an edit.")
    permutation_file: Path | None = Field(None, description="A TopHash permutation (safetensors) for new stores.")
    editor: EditorConfig = Field(default_factory=EditorConfig)

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        return init_settings, env_settings, _FlatEditorEnv(settings_cls)

    def models_dir(self) -> Path:
        return self.model_cache.expanduser() / MODELS_SUBDIR


def model_cache_dir(explicit: Path | str | None = None) -> Path:
    """The model cache: `explicit`, else SAM_MODEL_CACHE, else ~/.cache/sam (the one rule, used everywhere)."""
    if explicit is not None:
        return Path(explicit).expanduser()
    env = os.environ.get("SAM_MODEL_CACHE")
    return Path(env).expanduser() if env else default_model_cache()


def setting_error(exc: ValidationError) -> str:
    """One line naming the setting as the user wrote it (env var or option) and what is allowed."""
    first = exc.errors()[0]
    loc = [str(p) for p in first["loc"]]
    if loc[:1] == ["editor"] and len(loc) > 1:
        name = f"{env_name(loc[1])} (--{loc[1].replace('_', '-')})"
    elif loc:
        name = {"storage_dir": "SAM_HOME", "model_cache": "SAM_MODEL_CACHE"}.get(loc[0], env_name(loc[0]))
    else:
        name = "settings"
    value = first.get("input")
    shown = f"={value!r}" if isinstance(value, (str, int, float)) and not isinstance(value, bool) else ""
    return f"invalid setting {name}{shown}: {first['msg']}"


KNOWN_ENV = ({env_name(f) for f in EDITOR_FIELDS} | {"MEMOIR_STORAGE_DIR"}
             | {env_name(f) for f in Settings.model_fields if f not in ("editor", "storage_dir", "model_cache")})


def load_settings(**overrides) -> Settings:
    """Settings from the environment and `overrides` (CLI options), validated once. An unknown MEMOIR_*
    variable is refused, not ignored: a misspelt setting must not silently do nothing."""
    unknown = sorted(k for k in os.environ if k.startswith(ENV_PREFIX) and k not in KNOWN_ENV)
    if unknown:
        from sam.errors import InvalidInputError

        raise InvalidInputError(f"unknown setting {unknown[0]} (known: {', '.join(sorted(KNOWN_ENV))})")
    return Settings(**overrides)


def add_editor_options(parser) -> None:
    """Add every EditorConfig field to an argparse parser as --field-name (the benchmarks' options)."""
    for name, field in EditorConfig.model_fields.items():
        kind = field.annotation
        if kind is bool:
            parser.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None,
                                action=argparse.BooleanOptionalAction, help=(field.description or "").replace("%", "%%"))
            continue
        convert = {int: int, float: float}.get(kind, str)
        if str(kind).startswith("int |") or str(kind).startswith("typing.Optional[int]"):
            convert = int
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=convert, default=None,
                            help=(field.description or "").replace("%", "%%"))


def editor_config_from(args) -> EditorConfig:
    """The EditorConfig of the options add_editor_options added (unset ones keep their defaults)."""
    return EditorConfig(**{n: getattr(args, n) for n in EDITOR_FIELDS if getattr(args, n, None) is not None})
