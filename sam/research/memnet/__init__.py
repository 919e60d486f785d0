"""MemNet (design notes 003): explicit slot memory with a Transformer controller, and its benchmark.

    MemoryConfig, MemNetConfig    config.py       the knobs, validated
    MultiHeadMemoryBank, MemoryState  memory.py   N x D slots, top-k cosine reads, LRU-biased gated writes, decay
    TransformerController         controller.py   causal Transformer over one chunk; emits keys, gates, erase
    SemanticBottleneck            bottleneck.py   MLP compression before writes
    MemNet                        model.py        the end-to-end model (chunked; memory state in, state out)
    WindowTransformer, LSTMBaseline  baselines.py same-size baselines
    save_model/load_model, save_state/load_state  io.py   safetensors + JSON
    bench.main                    bench.py        `sam bench memnet` (experiments.py, tasks.py, analysis.py, plots.py)
"""

from .baselines import LSTMBaseline, WindowTransformer
from .bottleneck import SemanticBottleneck
from .config import MemNetConfig, MemoryConfig
from .controller import TransformerController
from .io import load_model, load_state, save_model, save_state
from .memory import MemoryState, MultiHeadMemoryBank
from .model import MemNet

__all__ = ["MemoryConfig", "MemNetConfig", "MultiHeadMemoryBank", "MemoryState", "TransformerController",
           "SemanticBottleneck", "MemNet", "WindowTransformer", "LSTMBaseline", "save_model", "load_model",
           "save_state", "load_state"]
