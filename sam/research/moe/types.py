"""Small value types: what a memory is and what an expert is tagged with."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

import torch


class MemoryType(str, Enum):
    EPISODIC = "episodic"  # one concrete experience (an input and its target)
    SEMANTIC = "semantic"  # general knowledge, e.g. a class prototype built by consolidation


class ExpertSpecialization(str, Enum):
    # A tag only: routing, not the tag, decides what an expert ends up doing (see bench specialization).
    GENERAL = "general"
    VISION = "vision"
    LANGUAGE = "language"
    REASONING = "reasoning"
    MULTIMODAL = "multimodal"


@dataclass
class MemoryEntry:
    id: int
    content: torch.Tensor  # (D,) raw input; keys are re-encoded from it so the encoder can keep learning
    value: Optional[torch.Tensor]  # (O,) target vector (one-hot label, regression target) or None
    memory_type: MemoryType = MemoryType.EPISODIC
    importance: float = 0.5
    access_count: int = 0
    timestamp: float = 0.0
    metadata: dict[str, Any] = field(default_factory=dict)
    tier: str = "short"  # "short" or "long"
