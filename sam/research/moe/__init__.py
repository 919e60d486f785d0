"""Memory-enhanced mixture of experts: experts that keep an external memory and recall it."""

from .config import MemoryConfig
from .gating import GatingNetwork
from .memory_bank import MemoryBank
from .memory_enhanced_moe import MemoryEnhancedMoE, create_memory_enhanced_moe
from .memory_expert import MemoryAttention, MemoryExpert
from .types import ExpertSpecialization, MemoryEntry, MemoryType

__all__ = [
    "ExpertSpecialization", "GatingNetwork", "MemoryAttention", "MemoryBank", "MemoryConfig", "MemoryEnhancedMoE",
    "MemoryEntry", "MemoryExpert", "MemoryType", "create_memory_enhanced_moe",
]
