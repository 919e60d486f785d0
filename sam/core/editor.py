"""MemoirEditor: a person's correction becomes a sparse, persistent, reversible edit of a real LM.

    edit(prompt, target):
      1. key: the memory layer's input, pooled over the QUESTION's tokens, through TopHash -> k columns;
      2. train a delta on those columns only (sam/core/trainer.py), from zero: the edit owns it;
      3. commit: one SQLite transaction with the edit, its mask and delta (checksummed); the router
         learns the mask. A correction of a question that already has an edit supersedes it.
    at inference each prompt's key is matched against the active edits' masks (sam/core/router.py);
    above the threshold the matched edit's delta fires at the answer positions, else nothing does.

The editor is the front of the library: the Store (files, lock, database), the Router (masks,
decisions) and the memory layer (which applies them) sit behind it. `trial()` lets a caller check a
trained edit before anything is written (`sam correct` verifies, then commits or discards).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib.resources import files
from pathlib import Path

import torch
from transformers import StoppingCriteria

from sam.config import EditorConfig
from sam.core import adapter
from sam.core.batching import PromptBatch, encode_pairs, encode_prompts
from sam.core.failpoints import failpoint
from sam.core.fingerprinter import TopHashFingerprinter, generate_permutation, load_permutation
from sam.core.memory_layer import ResidualMemoryLayer, Route, attach_memory, num_layers
from sam.core.model_loader import LoadedModel, load_model, resolve_model_dir, tensor_digest
from sam.core.prompts import Prompt, PromptFormat, Turn, normalize
from sam.core.router import Decision, Router
from sam.core.sentence_key import DIM as KEY_DIM
from sam.core.store import Store
from sam.core.trainer import EditRequest, EditTrainer, TrainOutcome
from sam.errors import CorruptStoreError, EditFailedError, InvalidInputError, SamError, StoreMismatchError
from sam.memory.edit_mask_db import MAX_ID, EditRecord

__all__ = ["EditRecord", "EditResult", "EditorConfig", "Generation", "MemoirEditor", "PendingEdit"]

PromptLike = str | Prompt


@dataclass
class EditResult:
    edit_id: int
    prompt: str
    target: str
    success: bool  # the prompt now yields the target (teacher-forced, every token)
    steps: int
    loss: float
    seconds: float
    target_accuracy: float
    supersedes: int | None = None  # the edit this one replaced
    already_present: bool = False  # the same correction was already active: nothing was trained

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PendingEdit:
    """A trained edit that is not written yet: `trial()` applies it, `commit()` writes it."""

    prompt: Prompt
    target: str
    outcome: TrainOutcome
    seconds: float
    supersedes: int | None
    source: str = "user"
    importance: float = 1.0

    @property
    def success(self) -> bool:
        return self.outcome.finite and self.outcome.accuracy == 1.0


@dataclass
class Generation:
    text: str  # the decoded continuation (special tokens dropped)
    edit_id: int | None  # the edit that fired for this prompt, if any
    overlap: float  # its key's best mask overlap


def background_prompts() -> list[str]:
    text = files("sam").joinpath("data/background_prompts.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


class _StopAtLayer(Exception):
    pass


class MemoirEditor:
    def __init__(self, loaded: LoadedModel, store: Store | None, config: EditorConfig, device: str,
                 prompt_format: str = "auto", permutation_file: Path | None = None, repair: bool = False):
        self.model, self.tokenizer, self.model_name = loaded.model, loaded.tokenizer, loaded.name
        self.config, self.device, self.store = config, torch.device(device), store
        self.read_only = store is None or store.read_only
        self._pending: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        try:
            self._open(prompt_format, permutation_file, repair)
        except BaseException:  # a failed open must not keep the writer lock (nor the database) for the process
            self.close()
            raise

    @classmethod
    def open(cls, store: Path | str | None, model: str = "default", device: str = "cpu",
             config: EditorConfig | None = None, read_only: bool = False, model_cache: Path | str | None = None,
             permutation_file: Path | None = None, prompt_format: str = "auto", dtype: str = "float32",
             verbose: bool = False, repair: bool = False) -> MemoirEditor:
        """Open (or, for a writer, create) the store at `store` for a model. A reader finds no store when
        nothing has been edited yet: it answers with the unedited model and creates nothing. With
        `repair`, a missing or unreadable fingerprinter is fitted again and kept only if it is the
        one the store recorded."""
        config = config or EditorConfig()
        _check_against_model(config, resolve_model_dir(model, model_cache, verbose))  # before anything is written
        opened = None
        if store is not None and (not read_only or Store.exists(store)):
            opened = Store(store, read_only=read_only)
            if read_only and opened.db.unclaimed:  # left by a writer's open that failed: nothing edited there
                opened.close()
                opened = None
        try:
            loaded = load_model(model, cache_dir=model_cache, device=device, dtype=dtype, verbose=verbose)
            return cls(loaded, opened, config, device, prompt_format, permutation_file, repair)
        except BaseException:
            if opened is not None:
                opened.close()
            raise

    def _open(self, prompt_format: str, permutation_file: Path | None, repair: bool) -> None:
        cfg = self.config
        depth = num_layers(self.model)
        self.layer = cfg.resolved_layer(depth)
        if not 0 <= self.layer < depth:
            raise InvalidInputError(f"layer {self.layer} is out of range: the model has {depth} layers (0..{depth - 1})")
        self.memory: ResidualMemoryLayer
        self.memory, self.site = attach_memory(self.model, self.layer)
        d_ff = self.memory.in_features
        if cfg.top_k > d_ff:
            raise InvalidInputError(f"top_k {cfg.top_k} is larger than layer {self.layer}'s {d_ff} features")
        model_cfg = getattr(self.model.config, "text_config", None) or self.model.config
        self.max_len = int(getattr(model_cfg, "max_position_embeddings", 2048))
        if self.store is not None and self.store.meta("prompt_format") and prompt_format == "auto":
            prompt_format = self.store.meta("prompt_format")  # a store keeps the format its keys were made in
        self.prompts = PromptFormat(prompt_format, self.tokenizer)
        self.fingerprinter = self._fingerprinter(permutation_file, repair)
        if self.store is not None:
            self.store.claim({"model": f"{Path(str(self.model_name)).name}:{tensor_digest(self.memory.base_layer.weight)}",
                              "layer": self.layer, "d_ff": d_ff, "d_model": self.memory.out_features,
                              "top_k": self.fingerprinter.top_k, "fingerprinter": self.fingerprinter.digest(),
                              "prompt_format": self.prompts.style})
        self.router = Router(self.fingerprinter, self.memory.out_features, self._delta, self.device, key=cfg.key,
                             similarity_threshold=cfg.similarity_threshold,
                             template_threshold=cfg.template_threshold, supersede_threshold=cfg.supersede_threshold,
                             mask_overlap=cfg.mask_overlap)
        if self.store is not None:
            ids, cols = self.store.active_columns()
            questions, keys = self.store.active_keys(self.router.encode) if len(ids) else ([], torch.zeros(0, KEY_DIM))
            self.router.load(ids, cols, questions, keys)
        self._prefixes: list[str] | None = None
        train_dtype = None if cfg.train_dtype == "auto" else getattr(torch, cfg.train_dtype)
        self.trainer = EditTrainer(self.model, self.tokenizer, self.prompts, self.memory, self.site.layers,
                                   self.layer, self.router.columns, train_dtype)

    def _fingerprinter(self, permutation_file: Path | None, repair: bool) -> TopHashFingerprinter:
        try:
            fp = self.store.load_fingerprinter() if self.store is not None else None
        except CorruptStoreError:
            if not repair:
                raise
            fp = None
        if fp is not None:
            if fp.size != self.memory.in_features:
                raise CorruptStoreError(f"the store's fingerprinter is for {fp.size} features, layer {self.layer} "
                                        f"has {self.memory.in_features}")
            if "top_k" in self.config.model_fields_set and self.config.top_k != fp.top_k:
                raise StoreMismatchError(f"store {self.store.root} was made with top_k {fp.top_k}, not "
                                         f"{self.config.top_k}; use another --store or leave top_k unset")
            return fp
        if self.store is None:  # a reader without a store: nothing is edited or routed, nothing to fit
            return TopHashFingerprinter(generate_permutation(self.memory.in_features, self.config.seed),
                                        self.config.top_k)
        rebuilding = self.store is not None and not self.store.created
        if rebuilding and not repair:
            raise CorruptStoreError(f"{self.store.fingerprinter_path} is missing; `sam repair` rebuilds it")
        d_ff = self.memory.in_features
        perm = load_permutation(permutation_file) if permutation_file else generate_permutation(d_ff, self.config.seed)
        if perm.numel() != d_ff:
            raise InvalidInputError(f"permutation has {perm.numel()} entries, layer {self.layer} has {d_ff} features")
        fp = TopHashFingerprinter(perm, self.config.top_k)
        fp.fit_background(self.pooled([self.prompts.render(p) for p in background_prompts()]))
        if rebuilding and fp.digest() != self.store.meta("fingerprinter"):
            raise CorruptStoreError("the fingerprinter cannot be rebuilt: the store was made with another seed, "
                                    "permutation or top_k (its keys cannot be recomputed)")
        if self.store is not None and not self.read_only:  # a reader repairs in memory only: it writes nothing
            self.store.save_fingerprinter(fp)
        return fp

    # --- PEFT-style adapter --------------------------------------------------------------------------------
    @contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Inside the block the model answers as if nothing had been edited (the memory layer is off)."""
        with self.memory.disabled():
            yield

    def save_pretrained(self, directory: Path | str) -> Path:
        """Write the active edits' trained weights as an adapter folder (sam/core/adapter.py): they load
        back bit for bit, into this model, layer, k and fingerprinter only. `sam edits export` is the
        portable form (questions and answers, retrained on load)."""
        if self.store is None or not Store.exists(self.store.root):
            raise InvalidInputError("nothing has been edited yet: there is no store to save")
        records = sorted(self.store.edits("active"), key=lambda r: r.id)
        sparse = [self.store.delta(r.id) for r in records]
        identity = {f: self.store.meta(f) for f in adapter.IDENTITY}
        return adapter.save_adapter(directory, identity, self.config.model_dump(), records, [c for c, _ in sparse],
                                    [d for _, d in sparse], self.store.fingerprinter_path)

    @classmethod
    def from_pretrained(cls, directory: Path | str, store: Path | str, model: str = "default", device: str = "cpu",
                        **open_kwargs) -> MemoirEditor:
        """Open (or create) the store at `store` with the adapter's config and add the adapter's edits to it
        in one transaction, their deltas exactly as saved (a later edit of a question supersedes an earlier
        one, as `commit_many` does). The model and the store must be the ones the adapter was trained for."""
        doc, tensors = adapter.read_adapter(directory)
        ident = doc["identity"]
        ed = cls.open(store, model=model, device=device, config=EditorConfig(**doc["config"]),
                      prompt_format=ident["prompt_format"], **open_kwargs)
        try:
            ours = {f: ed.store.meta(f) for f in adapter.IDENTITY}
            wrong = [f for f in adapter.IDENTITY if str(ours[f]) != str(ident[f])]
            if wrong:
                raise StoreMismatchError(f"the adapter in {directory} was trained for {wrong[0]} {ident[wrong[0]]!r}, "
                                         f"this store and model have {ours[wrong[0]]!r}")
            pending = []
            for n, e in enumerate(doc["edits"]):
                start = e["prompt"].rfind(e["question"])
                prompt = Prompt(e["prompt"], start, start + len(e["question"])) if start >= 0 else \
                    Prompt.plain(e["question"])
                outcome = TrainOutcome(tensors["cols"][n].long(), tensors["delta"][n], int(e["steps"]),
                                       float(e["loss"]), 1.0, True)
                pending.append(PendingEdit(prompt, e["target"], outcome, 0.0, None, e["source"], float(e["importance"])))
            ed.commit_many(pending)
        except BaseException:
            ed.close()
            raise
        return ed

    def close(self) -> None:
        if getattr(self, "store", None) is not None:
            self.store.close()

    def __enter__(self) -> MemoirEditor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- prompts -------------------------------------------------------------------------------------------
    def render(self, question: str, history: list[Turn] | tuple = (), system: str | None = None) -> Prompt:
        """The prompt for a question in a conversation, within the model's context (oldest turns dropped first)."""
        history = list(history)
        while True:
            prompt = self.prompts.render(question, history, system)
            n = len(self.tokenizer(prompt.text, add_special_tokens=self.prompts.add_special_tokens)["input_ids"])
            if n + self.config.max_target_tokens <= self.prompt_limit or not history:
                break
            history = history[1:]
        if n + self.config.max_target_tokens > self.prompt_limit:
            raise InvalidInputError(f"the question is {n} tokens with its frame; the limit is "
                                    f"{self.prompt_limit - self.config.max_target_tokens}")
        return prompt

    @property
    def prompt_limit(self) -> int:
        return min(self.config.max_prompt_tokens, self.max_len)

    def _prompt(self, prompt: PromptLike) -> Prompt:
        if isinstance(prompt, Prompt):
            return prompt
        if not isinstance(prompt, str) or not prompt.strip():
            raise InvalidInputError("the prompt is empty")
        return Prompt.plain(prompt)

    def _check_prompt(self, prompt: PromptLike) -> Prompt:
        p = self._prompt(prompt)
        if "\x00" in p.text:
            raise InvalidInputError("the prompt contains a NUL character")
        n = len(self.tokenizer(p.text, add_special_tokens=self.prompts.add_special_tokens)["input_ids"])
        if n > self.prompt_limit:
            raise InvalidInputError(f"the prompt is {n} tokens; the limit is {self.prompt_limit}")
        return p

    def check_target(self, target: str) -> str:
        """The answer as it will be taught (spaces normalised), or InvalidInputError: empty, or longer than
        max_target_tokens. Callers check it before any generation (a refusal costs no model work)."""
        if not isinstance(target, str) or not target.strip():
            raise InvalidInputError("the answer is empty")
        target = " ".join(target.split())
        n = len(self.tokenizer(" " + target, add_special_tokens=False)["input_ids"])
        if n > self.config.max_target_tokens:
            raise InvalidInputError(f"the answer is {n} tokens long; the limit is {self.config.max_target_tokens}")
        return target

    def _variants(self, prompt: Prompt) -> list[Prompt]:
        """The prompt, then the context variants an edit also trains on, so it holds in other conversations."""
        out = [prompt]
        for i, prefix in enumerate(self.prefixes):
            if self.prompts.style == "chat":
                other = self.prefixes[i - 1] if len(self.prefixes) > 1 else "Hello"
                history = [Turn(prefix, other)] if i % 2 else []
                out.append(self.prompts.render(prompt.question, history, system=None if i % 2 else prefix))
            else:
                out.append(Prompt(f"{prefix} {prompt.text}", prompt.start + len(prefix) + 1,
                                  prompt.end + len(prefix) + 1))
        return out

    @property
    def prefixes(self) -> list[str]:
        """Short model-written texts, sampled once per store and kept in it (seeded)."""
        if self._prefixes is None:
            stored = self.store.meta("prefixes") if self.store is not None else None
            self._prefixes = json.loads(stored) if stored else self._sample_prefixes()
            if stored is None and self.store is not None and not self.read_only:
                self.store.set_meta(prefixes=json.dumps(self._prefixes))
        return self._prefixes

    @torch.no_grad()
    def _sample_prefixes(self) -> list[str]:
        starts = ["The", "I", "In", "Today", "Why", "A", "This", "We"][: self.config.n_prefixes]
        gen = torch.Generator(device="cpu").manual_seed(self.config.seed)
        prefixes = []
        with self.memory.disabled():
            for start in starts:
                ids = self.tokenizer(start, return_tensors="pt")["input_ids"].to(self.device)
                for _ in range(self.config.prefix_tokens):
                    probs = torch.softmax(self.model(input_ids=ids, use_cache=False).logits[0, -1].float().cpu(), -1)
                    top = probs.topk(20)
                    nxt = top.indices[torch.multinomial(top.values, 1, generator=gen)]
                    ids = torch.cat([ids, nxt.view(1, 1).to(self.device)], dim=1)
                text = self.tokenizer.decode(ids[0], skip_special_tokens=True).replace("\n", " ").strip()
                prefixes.append(text + ".")
        return prefixes

    # --- keys and routing ------------------------------------------------------------------------------------
    def _encode(self, prompts: list[Prompt]) -> PromptBatch:
        return encode_prompts(self.tokenizer, self.prompts, prompts, self.tokenizer.pad_token_id).to(self.device)

    @torch.no_grad()
    def pooled(self, prompts: list[PromptLike], batch_size: int = 32) -> torch.Tensor:
        """(N, d_ff): the memory layer's input averaged over each question's tokens (the key before TopHash).
        The forward stops at the memory layer; the memory is off (it does not change its own input)."""
        out = []
        for i in range(0, len(prompts), batch_size):
            batch = self._encode([self._prompt(p) for p in prompts[i: i + batch_size]])
            # left-padded: each row's positions start at its first real token, as generate() counts them
            # (a model with absolute position embeddings, GPT-2, would otherwise key a padded row differently)
            positions = (batch.attention_mask.cumsum(-1) - 1).clamp_min(0)
            with self.memory.disabled(), self.memory.capture() as seen, self._stop_after_memory():
                try:
                    self.model.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                          position_ids=positions, use_cache=False)
                except _StopAtLayer:
                    pass
            out.append(TopHashFingerprinter.pool(seen[0], batch.key_mask).float())
        return torch.cat(out)

    @contextmanager
    def _stop_after_memory(self):
        handle = self.memory.register_forward_hook(lambda *_: (_ for _ in ()).throw(_StopAtLayer()))
        try:
            yield
        finally:
            handle.remove()

    def decide(self, prompts: list[PromptLike]) -> list[Decision]:
        """Which edit fires for each prompt (none: edit_id None), with the best key similarity."""
        checked = [self._check_prompt(p) for p in prompts]  # bad input is refused with or without edits
        if len(self.router) == 0:
            return [Decision(None, 0.0, None) for _ in checked]
        if self.router.key == "sentence":
            return self.router.decide_questions([p.question for p in checked])
        return self.router.decide_pooled(self.pooled(checked))

    def route(self, prompt: PromptLike) -> tuple[int | None, float]:
        d = self.decide([prompt])[0]
        return d.edit_id, d.overlap

    def _routing(self, prompts: list[Prompt], first_positions: torch.Tensor, key_mask: torch.Tensor,
                 decisions: list, memory: bool = True):
        """The memory-layer context for one batch: the sentence key is decided now, from the questions;
        TopHash inside the first forward, from the layer's own input over `key_mask`."""
        if not memory or len(self.router) == 0:
            return self.memory.disabled()
        if self.router.key == "sentence":
            decisions[:] = self.router.decide_questions([p.question for p in prompts])
            return self.memory.applying(self.router.route(decisions, self.device), first_positions)

        def fn(pooled: torch.Tensor) -> Route:
            decisions[:] = self.router.decide_pooled(pooled)
            return self.router.route(decisions, pooled.device)
        return self.memory.applying(fn, first_positions, key_mask)

    def _delta(self, edit_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        if edit_id in self._pending:
            return self._pending[edit_id]
        return self.store.delta(edit_id)

    # --- answering -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def answer(self, prompts: list[PromptLike], max_new_tokens: int = 32, memory: bool = True) -> list[Generation]:
        """Greedy answers, memory-aware: each question finds its edit (if any), which acts on the answer."""
        ps = [self._check_prompt(p) for p in prompts]
        batch = self._encode(ps)
        decisions: list[Decision] = []
        first = torch.zeros_like(batch.key_mask)
        first[:, -1] = True  # left-padded: every row's last prompt token is the last column
        stop = _StopAtLineEnd(self.tokenizer, batch.input_ids.shape[1]) if self.prompts.style != "chat" else None
        with self._routing(ps, first, batch.key_mask, decisions, memory):
            out = self.model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                      max_new_tokens=max_new_tokens, do_sample=False,
                                      pad_token_id=self.tokenizer.pad_token_id,
                                      stopping_criteria=[stop] if stop else None)
        eos = self.tokenizer.eos_token_id
        results = []
        for b, row in enumerate(out[:, batch.input_ids.shape[1]:].tolist()):
            row = row[: row.index(eos)] if eos in row else row
            d = decisions[b] if decisions else Decision(None, 0.0, None)
            results.append(Generation(self.tokenizer.decode(row, skip_special_tokens=True), d.edit_id, d.overlap))
        return results

    def generate_batch(self, prompts: list[PromptLike], max_new_tokens: int = 32, memory: bool = True) -> list[str]:
        return [g.text for g in self.answer(prompts, max_new_tokens, memory)]

    def generate(self, prompt: PromptLike, max_new_tokens: int = 32, memory: bool = True) -> str:
        return self.generate_batch([prompt], max_new_tokens, memory)[0]

    @torch.no_grad()
    def teacher_forced(self, pairs: list[tuple[PromptLike, str]], memory: bool = True
                       ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per pair, the logits (n_target, V) at the target positions and the target tokens (n_target,),
        in one forward with the memory routed as at inference."""
        pairs = [(self._prompt(p), t) for p, t in pairs]
        batch = encode_pairs(self.tokenizer, self.prompts, pairs, self.tokenizer.pad_token_id).to(self.device)
        with self._routing([p for p, _ in pairs], batch.answer_mask, batch.key_mask, [], memory):
            logits = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
        sel = logits[batch.rows, batch.positions].cpu()
        rows = batch.rows.cpu()
        return [(sel[rows == b], t.cpu()) for b, t in enumerate(batch.target_ids)]

    def predict_batch(self, pairs: list[tuple[PromptLike, str]], memory: bool = True
                      ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Teacher-forced: per pair, (argmax predictions, target tokens) over the target positions."""
        return [(logits.argmax(-1), target) for logits, target in self.teacher_forced(pairs, memory)]

    def score(self, prompt: PromptLike, target: str) -> float:
        """Teacher-forced token accuracy of `target` after `prompt` (1.0: every token is the argmax)."""
        pred, tgt = self.predict_batch([(self._check_prompt(prompt), self.check_target(target))])[0]
        return float((pred == tgt).float().mean())

    # --- editing ---------------------------------------------------------------------------------------------
    def _writable(self) -> Store:
        if self.read_only:
            raise SamError("the store is open read-only")
        return self.store

    def existing(self, prompt: PromptLike) -> EditRecord | None:
        """The active edit for this prompt's question, if there is one."""
        return self.existing_many([prompt])[0]

    def existing_many(self, prompts: list[PromptLike]) -> list[EditRecord | None]:
        """Per prompt, the active edit for its question (the same text, or the same question in other words
        by the sentence key, decided for all prompts together), or None: the edit a new answer replaces."""
        out: list[EditRecord | None] = [None] * len(prompts)
        if self.store is None:
            return out
        questions = [self._prompt(p).question for p in prompts]
        ask = []
        for i, q in enumerate(questions):
            found = self.store.db.find(q)
            if found:
                out[i] = found[-1]
            else:
                ask.append(i)
        if ask and self.router.key == "sentence" and len(self.router):  # the same question in other words
            for i, d in zip(ask, self.router.decide_questions([questions[i] for i in ask], replacing=True)):
                if d.edit_id is not None and d.edit_id not in self._pending:
                    out[i] = self.store.get(d.edit_id)
        return out

    def train(self, prompt: PromptLike, target: str, *, contexts: list[Prompt] | tuple = (), source: str = "user",
              importance: float = 1.0) -> PendingEdit:
        """Train an edit without writing it (see trial() and commit()). `contexts`: the same question in
        other conversations (e.g. the one the correction was made in), trained on too."""
        return self.train_many([(prompt, target)], contexts=[list(contexts)], source=source, importance=importance)[0]

    def train_many(self, pairs: list[tuple[PromptLike, str]], *, contexts: list[list[Prompt]] | None = None,
                   source: str = "user", importance: float = 1.0) -> list[PendingEdit]:
        """Train several edits together (each exactly as it would train alone); nothing is written."""
        self._writable()
        checked = [(self._check_prompt(p), self.check_target(t)) for p, t in pairs]
        extra = contexts or [[] for _ in checked]
        t0 = time.perf_counter()
        outcomes = self.trainer.train([EditRequest(self._variants(p) + [self._check_prompt(c) for c in more], t)
                                       for (p, t), more in zip(checked, extra)],
                                      lr=self.config.learning_rate, max_steps=self.config.max_steps,
                                      stop_loss=self.config.stop_loss, fast=self.config.fast)
        seconds = (time.perf_counter() - t0) / len(checked)
        pending = []
        for (p, t), o, old in zip(checked, outcomes, self.existing_many([p for p, _ in checked])):
            pending.append(PendingEdit(p, t, o, seconds, old.id if old is not None else None, source, float(importance)))
        return pending

    @contextmanager
    def trial(self, pending: PendingEdit) -> Iterator[None]:
        """Inside the block the pending edit is live (the edit it supersedes is not); nothing is written."""
        if not pending.outcome.finite:
            raise EditFailedError("the edit's training diverged (non-finite loss or delta): nothing was written")
        temp = MAX_ID - len(self._pending)
        self._pending[temp] = (pending.outcome.cols, pending.outcome.delta)
        hidden = self._replaced(pending)
        hidden = hidden if hidden in self.router else None
        if hidden is not None:
            self.router.remove(hidden)
        self.router.add(temp, pending.outcome.cols, pending.prompt.question)
        try:
            yield
        finally:
            self.router.remove(temp)
            del self._pending[temp]
            if hidden is not None:
                cols, _ = self.store.delta(hidden)
                self.router.add(hidden, cols, self.store.get(hidden).question)

    def _replaced(self, pending: PendingEdit) -> int | None:
        """The active edit of the pending edit's question now (not when it was trained: another edit of the
        question, or this very one, may have been committed since); one question keeps one active edit."""
        old = self.existing(pending.prompt)
        return old.id if old is not None else None

    def commit(self, pending: PendingEdit) -> EditResult:
        """Write a trained edit: one transaction (the superseded edit marked in it); then route to it."""
        return self.commit_many([pending])[0]

    def commit_many(self, pending: list[PendingEdit]) -> list[EditResult]:
        """Write trained edits in order, in ONE transaction (all or none); then route to them. A later edit
        of the same question supersedes an earlier one, as committing them one by one would."""
        store = self._writable()
        for p in pending:
            if not p.outcome.finite:
                raise EditFailedError("an edit's training diverged (non-finite loss or delta): nothing was written")
        results = []
        keys = self.router.encode([p.prompt.question for p in pending]) if pending else torch.zeros(0, KEY_DIM)
        failpoint("editor.commit.before")
        try:
            with store.transaction():
                for p, key in zip(pending, keys):
                    o = p.outcome
                    old = self._replaced(p)  # sees the edits committed earlier in this batch
                    if old is not None:
                        store.set_status(old, "superseded")
                        failpoint("editor.commit.supersede")
                        self.router.remove(old)
                    edit_id = store.add_edit(prompt=p.prompt.text, question=p.prompt.question, target=p.target,
                                             cols=o.cols, delta=o.delta, source=p.source, importance=p.importance,
                                             steps=o.steps, loss=o.loss, supersedes=old, qkey=key)
                    self.router.add(edit_id, o.cols, p.prompt.question, key)
                    results.append(EditResult(edit_id, p.prompt.text, p.target, p.success, o.steps, o.loss,
                                              p.seconds, o.accuracy, old))
        except BaseException:  # rolled back: the router goes back to the database's state
            for r in results:
                self.router.remove(r.edit_id)
                if r.supersedes is not None:
                    self.router.add(r.supersedes, store.delta(r.supersedes)[0], store.get(r.supersedes).question)
            raise
        failpoint("editor.commit.after")
        return results

    def edit(self, prompt: PromptLike, target: str, *, source: str = "user", importance: float = 1.0,
             keep_failed: bool = True) -> EditResult:
        """Train and commit one edit. The same correction again returns the active edit (nothing trained);
        a new answer to a question that has an edit supersedes it. A diverged edit is never written;
        one that did not fully take is written only with keep_failed."""
        self._writable()
        p, t = self._check_prompt(prompt), self.check_target(target)
        old = self.existing(p)
        if old is not None and normalize(old.target) == normalize(t):
            return EditResult(old.id, old.prompt, old.target, True, 0, old.loss, 0.0, 1.0, None, True)
        pending = self.train(p, t, source=source, importance=importance)
        if not pending.outcome.finite:
            raise EditFailedError("the edit's training diverged (non-finite loss or delta): nothing was written")
        if not pending.success and not keep_failed:
            raise EditFailedError(f"the edit did not take (token accuracy {pending.outcome.accuracy:.2f} after "
                                  f"{pending.outcome.steps} steps): nothing was written")
        return self.commit(pending)

    def revert(self, edit_id: int) -> EditRecord:
        """Undo one edit: it stops firing; an edit it superseded comes back."""
        store = self._writable()
        rec = store.get(edit_id)
        if rec.status != "active":
            raise InvalidInputError(f"edit {edit_id} is already {rec.status}")
        back = None
        failpoint("editor.revert.before")
        with store.transaction():
            store.set_status(rec.id, "reverted")
            failpoint("editor.revert.mid")
            if rec.supersedes is not None and store.get(rec.supersedes).status == "superseded":
                back = rec.supersedes
                store.set_status(back, "active")
        failpoint("editor.revert.after")
        self.router.remove(rec.id)
        if back is not None:
            self.router.add(back, store.delta(back)[0], store.get(back).question)
        return store.get(rec.id)

    # --- queries -----------------------------------------------------------------------------------------------
    def edits(self, status: str | None = "active") -> list[EditRecord]:
        return self.store.edits(status) if self.store is not None else []

    def get_edit(self, edit_id: int) -> EditRecord:
        if self.store is None:
            from sam.errors import UnknownEditError

            raise UnknownEditError(f"no edit with id {edit_id!r} (the store is empty)")
        return self.store.get(edit_id)

    def stats(self) -> dict:
        db = self.store.db_path if self.store is not None else None
        return {"edits": len(self.router), "layer": self.layer, "top_k": self.fingerprinter.top_k,
                "threshold": self.config.similarity_threshold, "prompt_format": self.prompts.style,
                "db_bytes": db.stat().st_size if db is not None and db.exists() else 0}


def _check_against_model(config: EditorConfig, model_dir: Path) -> None:
    """Refuse a layer or top_k the model cannot have, from its config.json: before a store is created or
    the weights load (`_open` checks again on the loaded model, the authority)."""
    try:
        cfg = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return
    cfg = cfg.get("text_config") or cfg
    depth, d_ff = cfg.get("num_hidden_layers") or cfg.get("n_layer"), cfg.get("intermediate_size") or cfg.get("n_inner")
    if isinstance(depth, int) and depth > 0:
        layer = config.resolved_layer(depth)
        if not 0 <= layer < depth:
            raise InvalidInputError(f"layer {layer} is out of range: the model has {depth} layers (0..{depth - 1})")
        if isinstance(d_ff, int) and config.top_k > d_ff:
            raise InvalidInputError(f"top_k {config.top_k} is larger than layer {layer}'s {d_ff} features")


class _StopAtLineEnd(StoppingCriteria):
    """Stops a row once its answer has a line of text and a newline after it (the line formats' answer is
    its first line; a base-style prompt otherwise runs on to the token limit)."""

    def __init__(self, tokenizer, prompt_len: int):
        self.tokenizer, self.prompt_len = tokenizer, prompt_len

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        done = []
        for row in input_ids[:, self.prompt_len:].tolist():
            text = self.tokenizer.decode(row, skip_special_tokens=True).lstrip()
            done.append("\n" in text)
        return torch.tensor(done, device=input_ids.device)
