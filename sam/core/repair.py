"""`sam repair`: rebuild what can be rebuilt from the database, take out what cannot be trusted.

The database is the single source of truth; the only derived file is the fingerprinter, which is
fitted again from the model (deterministic: seeded permutation, fixed background prompts) and kept
only when its digest is the one the store recorded. An edit whose stored delta fails its checksum,
has the wrong size or holds non-finite values cannot be rebuilt: it is reverted (it stops firing)
and listed, so the user can make it again.
"""

from __future__ import annotations

from pathlib import Path

from sam.config import EditorConfig
from sam.core.store import Store
from sam.errors import CorruptStoreError


def repair_store(root: Path, model: str = "default", device: str = "cpu", config: EditorConfig | None = None,
                 model_cache: Path | None = None, verbose: bool = False) -> dict:
    from sam.core.editor import MemoirEditor

    actions: list[str] = []
    if not Store.exists(root):
        raise CorruptStoreError(f"no sam store at {root}")
    with Store(root) as st:  # a writer open also upgrades an old store and drops orphaned temp files
        integrity = st.db.integrity()
        if integrity != "ok":
            raise CorruptStoreError(f"the database fails SQLite's integrity check ({integrity}); restore it from "
                                    f"a backup (the deltas cannot be trusted)")
        for edit_id, status, problem in st.db.verify_rows():
            if problem and status == "active":
                st.set_status(edit_id, "reverted")
                actions.append(f"edit #{edit_id}: {problem}: reverted (make the correction again)")
            elif problem:
                actions.append(f"edit #{edit_id} ({status}): {problem}: left as it is (not in use)")
        try:
            fingerprinter_ok = st.load_fingerprinter() is not None
        except CorruptStoreError:
            fingerprinter_ok = False
    if not fingerprinter_ok:
        with MemoirEditor.open(root, model=model, device=device, config=config, model_cache=model_cache,
                               verbose=verbose, repair=True):
            pass
        actions.append("fingerprinter: fitted again from the model; its digest matches the store's record")
    with Store(root, read_only=True) as st:
        report = st.check()
    return {"store": str(root), "actions": actions, "ok": report["ok"], "check": report}
