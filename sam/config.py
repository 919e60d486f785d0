"""Settings, read from the environment with the MEMOIR_* / SAM_* names of the design notes."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_home() -> Path:
    return Path.home() / ".sam"


class Settings(BaseSettings):
    """Process-wide defaults; every field can be overridden by a CLI option."""

    model_config = SettingsConfigDict(env_prefix="MEMOIR_", extra="ignore")

    storage_dir: Path = Field(
        default_factory=default_home,
        validation_alias=AliasChoices("SAM_HOME", "MEMOIR_STORAGE_DIR"),
        description="Folder holding the edit database, memories and the model cache.",
    )
    model: str = Field("default", description="'default' (SmolLM2-135M-Instruct) or a local HF model path.")
    device: str = Field("cpu", description="torch device: cpu, cuda, cuda:0 ...")
    layer: int | None = Field(None, description="Decoder layer whose FFN down-projection gets the memory.")
    top_k: int | None = Field(None, description="Columns per edit mask (TopHash k).")
    similarity_threshold: float | None = Field(None, description="Mask overlap needed for the memory to fire.")
    permutation_file: Path | None = Field(None, description="TopHash permutation (safetensors).")
    max_steps: int | None = Field(None, description="Most optimisation steps per edit.")
    learning_rate: float | None = Field(None, description="Edit learning rate (SGD).")
    # Chat layer (sam.orchestration): how a question becomes the prompt string generate() and edit() share.
    prompt_format: str = Field("line", description="Prompt frame for chat questions: line (question + newline), "
                                                  "qa ('Question: ...\\nAnswer:'), chat (ChatML template) or raw.")
    min_edit_confidence: float = Field(0.5, ge=0.0, le=1.0,
                                       description="Feedback read with less confidence than this is not turned into an edit.")


def get_settings() -> Settings:
    return Settings()
