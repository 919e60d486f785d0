"""Names that more than one part of sam must agree on: store files, formats, versions."""

# A store is one folder.
DB_FILE = "edits.sqlite"  # edits, their keys, masks and sparse deltas (the single source of truth)
FINGERPRINTER_FILE = "fingerprinter.safetensors"  # TopHash permutation and background
LOCK_FILE = ".lock"  # the writer lock (flock)
BACKUP_DIR = "backup"  # what an in-place upgrade kept of the previous format
LEGACY_MEMORY_DIR = "memory"  # schema 1: dense expert files (moved to backup/ on upgrade)
PLANS_FILE = "plans.json"  # the orchestrator's remembered plans
STORE_FILES = (DB_FILE, FINGERPRINTER_FILE, LEGACY_MEMORY_DIR)  # any of these means "a store lives here"

SCHEMA_VERSION = 2

# `sam edits export` / `import`: a portable, versioned JSON edit set.
EXPORT_FORMAT = "sam-edits"
EXPORT_VERSION = 2

# `MemoirEditor.save_pretrained` / `from_pretrained`: the trained edits themselves (PEFT's file names).
ADAPTER_CONFIG_FILE = "adapter_config.json"  # identity, editor config, the edits' texts
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"  # cols (N, k), delta (N, d_model, k)
ADAPTER_FORMAT = "sam-adapter"
ADAPTER_VERSION = 1

# Model cache: <cache>/models/<name>/ holds a converted HF folder.
MODELS_SUBDIR = "models"
CONVERTED_MARKER = "sam_source.json"
