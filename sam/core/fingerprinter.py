"""TopHash: a prompt's sparse fingerprint, the set of memory columns its edit may touch.

fingerprint(a) = perm[top_k(|mean_t(a_t) - background|)]

`a` is the input of the FFN down-projection (B, T, d_ff). Averaging over the prompt tokens and
subtracting the mean activation of unrelated prompts removes the dimensions that are large for
every input, so the top-k reflects what is specific to this prompt. The fixed random permutation
decouples which columns an edit trains from which neurons fire hardest. Everything is seeded
torch, never Python's hash(), so two processes give the same masks.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from sam.errors import CorruptStoreError, InvalidInputError
from sam.memory.atomic import atomic_write


def generate_permutation(size: int, seed: int = 0) -> torch.Tensor:
    """A fixed random permutation of range(size), the same on every machine for a seed."""
    if size <= 0:
        raise InvalidInputError(f"permutation size must be positive, got {size}")
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(size, generator=gen)


def save_permutation(perm: torch.Tensor, path: Path, seed: int | None = None) -> None:
    meta = {"size": str(perm.numel())} | ({"seed": str(seed)} if seed is not None else {})
    atomic_write(Path(path), lambda tmp: save_file({"permutation": perm.to(torch.int64).contiguous()}, tmp, metadata=meta))


def load_permutation(path: Path) -> torch.Tensor:
    try:
        perm = load_file(str(path))["permutation"]
    except (SafetensorError, KeyError, OSError) as exc:
        raise CorruptStoreError(f"cannot read permutation {path}: {exc}") from exc
    if not torch.equal(torch.sort(perm).values, torch.arange(perm.numel())):
        raise CorruptStoreError(f"{path} does not hold a permutation")
    return perm


class TopHashFingerprinter:
    """Maps down-projection inputs to k-sparse column sets (as sorted index tensors and dense masks)."""

    def __init__(self, permutation: torch.Tensor, top_k: int, background: torch.Tensor | None = None):
        size = permutation.numel()
        if not 0 < top_k <= size:
            raise InvalidInputError(f"top_k must be in 1..{size}, got {top_k}")
        self.size = size
        self.top_k = top_k
        self.permutation = permutation.to(torch.int64)
        self.background = torch.zeros(size) if background is None else background.to(torch.float32)
        if self.background.shape != (size,):
            raise InvalidInputError(f"background has shape {tuple(self.background.shape)}, want ({size},)")

    # --- fingerprints --------------------------------------------------------------------------------
    @staticmethod
    def pool(acts: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean over the prompt tokens: (B, T, d) x (B, T) -> (B, d)."""
        if token_mask is None:
            return acts.mean(dim=1)
        w = token_mask.to(acts.dtype).unsqueeze(-1)  # (B, T, 1)
        return (acts * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)

    def columns(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, d) pooled activations -> (B, k) sorted column indices."""
        if pooled.dim() == 1:
            pooled = pooled.unsqueeze(0)
        if pooled.shape[-1] != self.size:
            raise InvalidInputError(f"activations have {pooled.shape[-1]} features, fingerprinter expects {self.size}")
        centred = pooled.float() - self.background.to(pooled.device)
        top = centred.abs().topk(self.top_k, dim=-1).indices  # (B, k)
        return self.permutation.to(pooled.device)[top].sort(dim=-1).values

    def generate_mask(self, activations: torch.Tensor) -> torch.Tensor:
        """Dense 0/1 float mask (d,) for one activation vector (d,) or a (T, d) sequence."""
        pooled = activations.mean(dim=0) if activations.dim() == 2 else activations
        return self.to_dense(self.columns(pooled))[0]

    def to_dense(self, cols: torch.Tensor) -> torch.Tensor:
        """(B, k) indices -> (B, d) 0/1 float masks."""
        cols = cols if cols.dim() == 2 else cols.unsqueeze(0)
        mask = torch.zeros(cols.shape[0], self.size, device=cols.device)
        return mask.scatter_(1, cols, 1.0)

    def validate_determinism(self, activations: torch.Tensor, trials: int = 3) -> bool:
        first = self.generate_mask(activations)
        return all(torch.equal(first, self.generate_mask(activations.clone())) for _ in range(trials))

    # --- background -----------------------------------------------------------------------------------
    def fit_background(self, pooled: torch.Tensor) -> None:
        """Set the background to the mean pooled activation of unrelated prompts (N, d)."""
        self.background = pooled.float().mean(dim=0).cpu()

    # --- storage ----------------------------------------------------------------------------------------
    def digest(self) -> str:
        """sha256 of the permutation, background and k: what a store's masks depend on."""
        h = hashlib.sha256(self.permutation.numpy().tobytes())
        h.update(self.background.numpy().tobytes())
        h.update(str(self.top_k).encode())
        return h.hexdigest()[:16]

    def save(self, path: Path) -> None:
        tensors = {"permutation": self.permutation.contiguous(), "background": self.background.contiguous()}
        atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata={"top_k": str(self.top_k)}))

    @classmethod
    def load(cls, path: Path) -> "TopHashFingerprinter":
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                top_k = int(f.metadata()["top_k"])
                perm, bg = f.get_tensor("permutation"), f.get_tensor("background")
        except (SafetensorError, KeyError, OSError, ValueError, TypeError) as exc:
            raise CorruptStoreError(f"cannot read fingerprinter {path}: {exc}") from exc
        return cls(perm, top_k, bg)
