"""CMRN: composable memory routing network (design notes 004), built and measured against a Transformer.

See docs/cmrn.md. Heavy dependencies (faiss, sentence-transformers, matplotlib) are imported lazily.
"""

from sam.research.cmrn.config import CMRNConfig
from sam.research.cmrn.experts import (ExpertModule, GeneralProcessor, GenerativeUnit, PatternMatcher,
                                       SymbolicLogicUnit)
from sam.research.cmrn.memory import MemoryAttention, MemorySystem, PersistentMemory
from sam.research.cmrn.model import CMRN, CMRNOutput
from sam.research.cmrn.routing import DynamicRouter
from sam.research.cmrn.temporal import TemporalAbstraction, TemporalLayer
from sam.research.cmrn.trainer import CMRNTrainer, TrainingConfig
from sam.research.cmrn.transformer import TransformerConfig, TransformerLM

__all__ = ["CMRN", "CMRNConfig", "CMRNOutput", "CMRNTrainer", "DynamicRouter", "ExpertModule", "GeneralProcessor",
           "GenerativeUnit", "MemoryAttention", "MemorySystem", "PatternMatcher", "PersistentMemory",
           "SymbolicLogicUnit", "TemporalAbstraction", "TemporalLayer", "TrainingConfig", "TransformerConfig",
           "TransformerLM"]
