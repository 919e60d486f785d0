"""MemoirEditor: a person's correction becomes a sparse, persistent, reversible edit of a real LM.

edit(prompt, target):
  1. fingerprint the prompt (TopHash over the down-projection input of layer L) -> k columns;
  2. pick the memory expert whose columns are least crowded (open a new one past the bound);
  3. train only W_e[:, cols] (SGD, cross-entropy on the target tokens, the prompt plus copies
     behind short prefixes), running only the layers from L up: the stream below is cached;
  4. persist: the expert's memory as a new safetensors file, then one SQLite transaction with the
     edit, its mask and its sparse delta, and the pointer to the new file.
At inference each prompt's fingerprint is looked up among the stored masks; above the threshold
the memory fires with the matched edit's columns in its expert, otherwise it stays silent.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib.resources import files
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from sam.core.batching import encode_pairs
from sam.core.fingerprinter import TopHashFingerprinter, generate_permutation, load_permutation
from sam.core.model_layers import ResidualMemoryLayer, Route, attach_memory, num_layers
from sam.core.model_loader import LoadedModel, load_model, tensor_digest
from sam.core.trainer import EditTrainer
from sam.errors import CorruptStoreError, InvalidInputError, SamError, StoreLockedError
from sam.memory.atomic import atomic_write
from sam.memory.edit_mask_db import EditMaskDatabase, EditRecord

__all__ = ["EditorConfig", "EditResult", "EditRecord", "MemoirEditor"]


@dataclass
class EditorConfig:
    layer: int | None = None  # None: 85% of the depth (layer 25 of SmolLM2's 30)
    top_k: int = 128  # columns per edit
    threshold: float = 0.45  # mask overlap needed for the memory to fire
    lr: float = 50.0  # SGD; the paper's 1.0 does not converge in 30 steps here (inputs are small)
    max_steps: int = 30
    stop_loss: float = 0.05  # early stop once the mean target NLL is below this
    n_prefixes: int = 2  # extra training copies behind short random prefixes
    prefix_tokens: int = 6
    expert_load_bound: float = 1.0  # open a new expert past this mean column load (measured: 1 keeps Rel >= 0.95 at T=1000)
    max_target_tokens: int = 64
    seed: int = 0
    fast: bool = True  # cache the layers below the edited one (False: the naive full-model loop)
    head_dtype: str = "auto"  # lm_head copy for the fast loop's logits: auto (bf16 where fast), bfloat16, float32

    def resolved_layer(self, depth: int) -> int:
        return self.layer if self.layer is not None else int(round(0.85 * (depth - 1)))


@dataclass
class EditResult:
    edit_id: int
    prompt: str
    target: str
    success: bool  # the prompt now yields the target (teacher-forced, every token)
    steps: int
    loss: float
    seconds: float
    expert: int
    target_accuracy: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _StoreFiles:
    root: Path
    db: Path = field(init=False)
    fingerprinter: Path = field(init=False)
    memory: Path = field(init=False)
    lock: Path = field(init=False)

    def __post_init__(self):
        self.db = self.root / "edits.sqlite"
        self.fingerprinter = self.root / "fingerprinter.safetensors"
        self.memory = self.root / "memory"
        self.lock = self.root / ".lock"


def background_prompts() -> list[str]:
    text = files("sam").joinpath("data/background_prompts.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


class MemoirEditor:
    def __init__(self, loaded: LoadedModel, store: Path, config: EditorConfig, device: str, read_only: bool,
                 permutation_file: Path | None = None, repair: bool = False):
        self.model, self.tokenizer, self.model_name = loaded.model, loaded.tokenizer, loaded.name
        self.config, self.device, self.read_only = config, torch.device(device), read_only
        self.files = _StoreFiles(Path(store))
        self._lock_fd: int | None = None
        self._prepare_store()
        try:
            self._open(config, permutation_file, repair)
        except BaseException:  # a failed open must not keep the writer lock (nor the database) for the process
            self.close()
            raise

    def _open(self, config: EditorConfig, permutation_file: Path | None, repair: bool) -> None:
        if config.head_dtype not in ("auto", "bfloat16", "float32"):
            raise InvalidInputError(f"head_dtype {config.head_dtype!r}: want auto, bfloat16 or float32")
        depth = num_layers(self.model)
        self.layer = config.resolved_layer(depth)
        if not 0 <= self.layer < depth:
            raise InvalidInputError(f"layer {self.layer} is out of range: the model has {depth} layers")
        self.memory: ResidualMemoryLayer
        self.memory, self.site = attach_memory(self.model, self.layer)
        self.max_len = int(getattr(getattr(self.model.config, "text_config", None) or self.model.config,
                                   "max_position_embeddings", 2048))
        self.fingerprinter = self._load_fingerprinter(permutation_file)
        identity = {"model": f"{Path(str(self.model_name)).name}:{tensor_digest(self.memory.base.weight)}",
                    "layer": self.layer, "d_ff": self.memory.in_features, "top_k": self.fingerprinter.top_k,
                    "fingerprinter": self.fingerprinter.digest()}
        self.db = EditMaskDatabase(self.files.db, identity=identity, read_only=self.read_only)
        self.prefixes = self._load_prefixes()
        self._cols: dict[int, tuple[int, torch.Tensor]] = {}  # active edit -> (expert, cols)
        self._usage: list[torch.Tensor] = []  # per expert: active edits using each column (d_ff,)
        self._load_memory(repair)
        self.memory.router = self._route
        head_dtype = None if config.head_dtype == "auto" else getattr(torch, config.head_dtype)
        self.trainer = EditTrainer(self.model, self.tokenizer, self.memory, self.site.layers, self.layer, head_dtype)

    # --- opening -----------------------------------------------------------------------------------------
    @classmethod
    def open(cls, store: Path | str, model: str = "default", device: str = "cpu",
             config: EditorConfig | None = None, read_only: bool = False, model_cache: Path | str | None = None,
             permutation_file: Path | None = None, repair: bool = False) -> "MemoirEditor":
        """Open (or create) a store for a model. model_cache defaults to SAM_MODEL_CACHE or ~/.cache/sam."""
        cache = Path(model_cache or os.environ.get("SAM_MODEL_CACHE") or Path.home() / ".cache" / "sam")
        loaded = load_model(model, cache_dir=cache, device=device)
        return cls(loaded, Path(store), config or EditorConfig(), device, read_only, permutation_file, repair)

    def _prepare_store(self) -> None:
        root = self.files.root
        if self.read_only:
            if not self.files.db.exists():
                raise CorruptStoreError(f"no sam store at {root} (nothing has been edited there yet)")
            return
        try:
            root.mkdir(parents=True, exist_ok=True)
            self.files.memory.mkdir(exist_ok=True)
            fd = os.open(self.files.lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise SamError(f"store folder {root} is not writable: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreLockedError(f"store {root} is in use by another sam process (one writer at a time)") from None
        self._lock_fd = fd

    def _load_fingerprinter(self, permutation_file: Path | None) -> TopHashFingerprinter:
        path = self.files.fingerprinter
        if path.exists():
            fp = TopHashFingerprinter.load(path)
            if fp.size != self.memory.in_features:
                raise CorruptStoreError(f"{path} is for {fp.size} features, layer {self.layer} has "
                                        f"{self.memory.in_features}")
            return fp
        if self.read_only:
            raise CorruptStoreError(f"{path} is missing")
        d_ff = self.memory.in_features
        perm = load_permutation(permutation_file) if permutation_file else generate_permutation(d_ff, self.config.seed)
        if perm.numel() != d_ff:
            raise InvalidInputError(f"permutation has {perm.numel()} entries, layer {self.layer} has {d_ff} features")
        fp = TopHashFingerprinter(perm, self.config.top_k)
        fp.fit_background(self._pooled_activations(background_prompts()))
        fp.save(path)
        return fp

    def _load_prefixes(self) -> list[str]:
        stored = self.db.meta.get("prefixes")
        if stored is not None:
            return json.loads(stored)
        prefixes = self._sample_prefixes()
        if not self.read_only:
            with self.db.transaction():
                self.db.db["meta"].upsert({"key": "prefixes", "value": json.dumps(prefixes)}, pk="key")
        return prefixes

    def _load_memory(self, repair: bool) -> None:
        repaired = []
        for e in self.db.experts():
            path = self.files.memory / e["file"]
            try:
                weight = load_file(str(path))["weight"]
                self.memory.set_expert(e["id"], weight)
            except (SafetensorError, KeyError, OSError, InvalidInputError) as exc:
                if not repair:
                    raise CorruptStoreError(f"memory file {path} is unreadable ({exc}); the edits are intact in "
                                            f"{self.files.db.name}: open with repair to rebuild it") from exc
                self.memory.set_expert(e["id"], self._rebuild_expert(e["id"]))
                repaired.append(e["id"])
        for edit_id, (expert, cols) in self.db.active_columns().items():
            self._track(edit_id, expert, cols.to(self.device))
        self.db.index()
        if not self.read_only:
            for expert in repaired:  # write the rebuilt memory over the unreadable file
                self._swap_expert_file(expert, lambda: None)

    def _rebuild_expert(self, expert: int) -> torch.Tensor:
        """An expert's memory as the sum of its active edits' sparse deltas."""
        weight = torch.zeros(self.memory.out_features, self.memory.in_features)
        for rec in self.db.edits("active"):
            if rec.expert == expert:
                cols, delta = self.db.sparse(rec.id)
                weight[:, cols] += delta
        return weight

    def close(self) -> None:
        if getattr(self, "memory", None) is not None:
            self.memory.router = None
        if getattr(self, "db", None) is not None:
            self.db.close()
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "MemoirEditor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- routing -----------------------------------------------------------------------------------------
    def _track(self, edit_id: int, expert: int, cols: torch.Tensor) -> None:
        self._cols[edit_id] = (expert, cols)
        while len(self._usage) <= expert:
            self._usage.append(torch.zeros(self.memory.in_features, dtype=torch.int32, device=self.device))
        self._usage[expert][cols] += 1

    def _untrack(self, edit_id: int) -> None:
        expert, cols = self._cols.pop(edit_id)
        self._usage[expert][cols] -= 1

    def _route(self, pooled: torch.Tensor) -> Route:
        """(B, d_ff) pooled prompt activations -> which expert fires with which columns."""
        query = self.fingerprinter.columns(pooled)  # (B, k)
        experts = torch.full((query.shape[0],), -1, dtype=torch.long, device=query.device)
        cols = query.clone()
        ids, overlaps = [], []
        for b, match in enumerate(self.db.nearest(query)):
            hit = match is not None and match.overlap >= self.config.threshold and match.edit_id in self._cols
            ids.append(match.edit_id if hit else None)
            overlaps.append(match.overlap if match is not None else 0.0)
            if hit:
                experts[b], cols[b] = self._cols[match.edit_id]
        return Route(experts, cols, ids, overlaps)

    def route(self, prompt: str) -> tuple[int | None, float]:
        """Which edit would fire for this prompt, and the best mask overlap."""
        self._check_text(prompt, "prompt")
        pooled = self._pooled_activations([prompt])
        r = self._route(pooled)
        return r.edit_id[0], r.overlap[0]

    @contextmanager
    def _routed(self, prompt_mask: torch.Tensor):
        self.memory.begin(prompt_mask)
        try:
            yield
        finally:
            self.memory.end()

    # --- activations -------------------------------------------------------------------------------------
    @torch.no_grad()
    def _pooled_activations(self, prompts: list[str], batch_size: int = 32) -> torch.Tensor:
        """Mean down-proj input over each prompt's tokens (N, d_ff); memory off (it doesn't change it)."""
        out = []
        box = {}
        self.memory.on_input = lambda x: box.__setitem__("x", x)
        try:
            for i in range(0, len(prompts), batch_size):
                enc = self._encode_prompts(prompts[i: i + batch_size])
                self._forward(enc["input_ids"], enc["attention_mask"], memory=False)
                out.append(TopHashFingerprinter.pool(box["x"], enc["attention_mask"]).float())
        finally:
            self.memory.on_input = None
        return torch.cat(out)

    def _encode_prompts(self, prompts: list[str]) -> dict:
        self.tokenizer.padding_side = "left"
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True)
        return {k: v.to(self.device) for k, v in enc.items()}

    def _forward(self, input_ids, attention_mask, memory: bool = True):
        self.memory.enabled = memory
        try:
            return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        finally:
            self.memory.enabled = True

    @torch.no_grad()
    def _sample_prefixes(self) -> list[str]:
        """Short model-written prefixes, seeded: the training copies that make an edit robust to context."""
        starts = ["The", "I", "In", "Today", "Why", "A", "This", "We"][: self.config.n_prefixes]
        gen = torch.Generator(device="cpu").manual_seed(self.config.seed)
        prefixes = []
        for start in starts:
            ids = self.tokenizer(start, return_tensors="pt")["input_ids"].to(self.device)
            for _ in range(self.config.prefix_tokens):
                logits = self._forward(ids, torch.ones_like(ids), memory=False).logits[0, -1].float().cpu()
                probs = torch.softmax(logits, -1)
                top = probs.topk(20)
                nxt = top.indices[torch.multinomial(top.values, 1, generator=gen)]
                ids = torch.cat([ids, nxt.view(1, 1).to(self.device)], dim=1)
            text = self.tokenizer.decode(ids[0], skip_special_tokens=True).replace("\n", " ").strip()
            prefixes.append(text + ".")
        return prefixes

    # --- validation ----------------------------------------------------------------------------------------
    def _check_text(self, text: str, what: str) -> str:
        if not isinstance(text, str) or not text.strip():
            raise InvalidInputError(f"{what} is empty")
        return text

    def _check_pair(self, prompt: str, target: str) -> tuple[str, str]:
        prompt, target = self._check_text(prompt, "prompt"), self._check_text(target, "target").strip()
        n_target = len(self.tokenizer(" " + target, add_special_tokens=False)["input_ids"])
        if n_target > self.config.max_target_tokens:
            raise InvalidInputError(f"target is {n_target} tokens long; the limit is {self.config.max_target_tokens}")
        n_all = len(self.tokenizer(prompt, add_special_tokens=True)["input_ids"]) + n_target
        longest_prefix = self.config.prefix_tokens + 8
        if n_all + longest_prefix > self.max_len:
            raise InvalidInputError(f"prompt and target are {n_all} tokens; the model takes {self.max_len}")
        return prompt, target

    # --- editing --------------------------------------------------------------------------------------------
    def _assign_expert(self, cols: torch.Tensor) -> int:
        """Least crowded expert for these columns; a new one when every expert is past the bound."""
        loads = [float(u[cols].float().mean()) for u in self._usage[: self.memory.num_experts]]
        if loads and min(loads) <= self.config.expert_load_bound:
            return loads.index(min(loads))
        return self.memory.add_expert()

    def edit(self, prompt: str, target: str, *, source: str = "user", importance: float = 1.0) -> EditResult:
        if self.read_only:
            raise SamError("the store is open read-only")
        prompt, target = self._check_pair(prompt, target)
        t0 = time.perf_counter()
        cfg = self.config
        texts = [prompt] + [f"{p} {prompt}" for p in self.prefixes]
        outcome, expert = self.trainer.train(texts, target, self.fingerprinter.columns, self._assign_expert,
                                             lr=cfg.lr, max_steps=cfg.max_steps, stop_loss=cfg.stop_loss,
                                             fast=cfg.fast)
        cols, delta = outcome.cols, outcome.delta
        self.memory.memory[expert][:, cols] += delta
        edit_id = self._persist_edit(prompt, target, cols, delta, expert, source, importance, outcome.steps,
                                     outcome.loss)
        return EditResult(edit_id, prompt, target, outcome.accuracy == 1.0, outcome.steps, outcome.loss,
                          time.perf_counter() - t0, expert, outcome.accuracy)

    def _write_expert(self, expert: int) -> str:
        name = f"expert_{expert:03d}.{time.time_ns():x}.safetensors"
        weight = self.memory.memory[expert].detach().to("cpu").contiguous()
        atomic_write(self.files.memory / name, lambda tmp: save_file({"weight": weight}, tmp))
        return name

    def _swap_expert_file(self, expert: int, mutate) -> None:
        """Write the expert's new memory file, run `mutate` in the same transaction as the pointer update,
        then drop the old file. A crash at any point leaves the database pointing at a complete file."""
        old = {e["id"]: e["file"] for e in self.db.experts()}.get(expert)
        name = self._write_expert(expert)
        try:
            with self.db.transaction():
                result = mutate()
                n = sum(1 for e, _ in self._cols.values() if e == expert)
                self.db.set_expert_file(expert, name, n)
        except BaseException:
            (self.files.memory / name).unlink(missing_ok=True)
            raise
        if old and old != name:
            (self.files.memory / old).unlink(missing_ok=True)
        return result

    def _persist_edit(self, prompt, target, cols, delta, expert, source, importance, steps, loss) -> int:
        try:
            edit_id = self._swap_expert_file(expert, lambda: self.db.insert_edit(
                prompt=prompt, target=target, cols=cols, delta=delta, expert=expert, source=source,
                importance=importance, steps=steps, loss=loss))
        except BaseException:
            self.memory.memory[expert][:, cols] -= delta  # keep memory and store in step
            raise
        self._track(edit_id, expert, cols)
        self.db.add_to_index(edit_id, cols)
        return edit_id

    def revert(self, edit_id: int) -> EditRecord:
        """Undo one edit: subtract its sparse delta; its prompt then answers as before the edit."""
        if self.read_only:
            raise SamError("the store is open read-only")
        rec = self.db.get(edit_id)
        if rec.status != "active":
            raise InvalidInputError(f"edit {edit_id} is already {rec.status}")
        cols, delta = self.db.sparse(edit_id)
        cols, delta = cols.to(self.device), delta.to(self.device)
        self.memory.memory[rec.expert][:, cols] -= delta
        self._untrack(edit_id)
        try:
            self._swap_expert_file(rec.expert, lambda: self.db.set_status(edit_id, "reverted"))
        except BaseException:
            self.memory.memory[rec.expert][:, cols] += delta
            self._track(edit_id, rec.expert, cols)
            raise
        self.db.remove_from_index(edit_id)
        return self.db.get(edit_id)

    # --- queries ---------------------------------------------------------------------------------------------
    def edits(self, status: str | None = "active") -> list[EditRecord]:
        return self.db.edits(status)

    def get_edit(self, edit_id: int) -> EditRecord:
        return self.db.get(edit_id)

    @torch.no_grad()
    def generate_tokens(self, prompts: list[str], max_new_tokens: int = 32, memory: bool = True) -> list[list[int]]:
        """Greedy continuation token ids per prompt (up to and excluding EOS), memory-aware."""
        for p in prompts:
            self._check_text(p, "prompt")
        enc = self._encode_prompts(prompts)
        self.memory.enabled = memory
        try:
            with self._routed(enc["attention_mask"].bool()):
                out = self.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                          pad_token_id=self.tokenizer.pad_token_id)
        finally:
            self.memory.enabled = True
        eos = self.tokenizer.eos_token_id
        rows = []
        for row in out[:, enc["input_ids"].shape[1]:].tolist():
            rows.append(row[: row.index(eos)] if eos in row else row)
        return rows

    def generate_batch(self, prompts: list[str], max_new_tokens: int = 32, memory: bool = True) -> list[str]:
        """Greedy continuations (text after the prompt), memory-aware."""
        return [self.tokenizer.decode(r, skip_special_tokens=True)
                for r in self.generate_tokens(prompts, max_new_tokens, memory)]

    def generate(self, prompt: str, max_new_tokens: int = 32, memory: bool = True) -> str:
        return self.generate_batch([prompt], max_new_tokens, memory)[0]

    @torch.no_grad()
    def predict_batch(self, pairs: list[tuple[str, str]], memory: bool = True) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Teacher-forced: per pair, (argmax predictions, target tokens) over the target positions."""
        batch = encode_pairs(self.tokenizer, pairs, self.tokenizer.pad_token_id).to(self.device)
        with self._routed(batch.prompt_mask):
            logits = self._forward(batch.input_ids, batch.attention_mask, memory=memory).logits
        pred = logits[batch.rows, batch.positions].argmax(-1)
        return [(pred[batch.rows == b].cpu(), t.cpu()) for b, t in enumerate(batch.target_ids)]

    def score(self, prompt: str, target: str) -> float:
        """Teacher-forced token accuracy of `target` after `prompt` (1.0: every token is the argmax)."""
        self._check_pair(prompt, target)
        pred, tgt = self.predict_batch([(prompt, target)])[0]
        return float((pred == tgt).float().mean())

    def stats(self) -> dict:
        files_bytes = sum(p.stat().st_size for p in self.files.memory.glob("*.safetensors"))
        return {"edits": len(self._cols), "experts": self.memory.num_experts, "layer": self.layer,
                "top_k": self.fingerprinter.top_k, "threshold": self.config.threshold,
                "db_bytes": self.files.db.stat().st_size if self.files.db.exists() else 0,
                "memory_bytes": files_bytes}
