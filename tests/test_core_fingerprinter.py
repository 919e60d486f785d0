"""TopHash fingerprinter and the permutation file: determinism, round trips, shape errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sam.core.fingerprinter import TopHashFingerprinter, generate_permutation, load_permutation, save_permutation
from sam.errors import CorruptStoreError, InvalidInputError

REPO = Path(__file__).resolve().parents[1]
D, K = 96, 12


def acts(n: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed))


def test_permutation_is_seeded_and_a_permutation():
    a, b, c = generate_permutation(D, 7), generate_permutation(D, 7), generate_permutation(D, 8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(a.sort().values, torch.arange(D))
    assert not torch.equal(a, torch.arange(D))


@pytest.mark.parametrize("size", [0, -3])
def test_permutation_size_must_be_positive(size):
    with pytest.raises(InvalidInputError):
        generate_permutation(size)


def test_permutation_file_round_trip_is_safetensors(tmp_path):
    perm = generate_permutation(D, 3)
    path = tmp_path / "perm.safetensors"
    save_permutation(perm, path, seed=3)
    assert torch.equal(load_permutation(path), perm)
    with safe_open(str(path), framework="pt") as f:  # a plain safetensors file, metadata included
        assert f.metadata() == {"size": str(D), "seed": "3"}
        assert list(f.keys()) == ["permutation"]
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temp file


def test_load_permutation_refuses_garbage_and_non_permutations(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(CorruptStoreError):
        load_permutation(bad)
    dup = tmp_path / "dup.safetensors"
    save_file({"permutation": torch.tensor([0, 1, 1, 3])}, str(dup))
    with pytest.raises(CorruptStoreError, match="does not hold a permutation"):
        load_permutation(dup)
    wrong_key = tmp_path / "key.safetensors"
    save_file({"perm": torch.arange(4)}, str(wrong_key))
    with pytest.raises(CorruptStoreError):
        load_permutation(wrong_key)
    with pytest.raises(CorruptStoreError):
        load_permutation(tmp_path / "missing.safetensors")


def test_masks_are_k_sparse_sorted_and_deterministic():
    x = acts()
    a = TopHashFingerprinter(generate_permutation(D, 0), K)
    b = TopHashFingerprinter(generate_permutation(D, 0), K)
    cols = a.columns(x)
    assert cols.shape == (5, K)
    assert torch.equal(cols, b.columns(x.clone()))
    assert bool((cols[:, 1:] > cols[:, :-1]).all())  # sorted, no repeats
    dense = a.to_dense(cols)
    assert torch.equal(dense.sum(1), torch.full((5,), float(K)))
    assert torch.equal(dense[0].nonzero().flatten(), cols[0])
    assert torch.equal(a.generate_mask(x[0]), dense[0])
    assert a.validate_determinism(x[0])
    # another seed maps the same top neurons to other columns
    c = TopHashFingerprinter(generate_permutation(D, 1), K)
    assert not torch.equal(c.columns(x), cols)


def test_columns_are_the_permuted_top_k_of_the_centred_activation():
    perm = generate_permutation(D, 0)
    x = torch.zeros(D)
    hot = torch.tensor([5, 17, 40])
    x[hot] = torch.tensor([3.0, -4.0, 2.5])  # |.| counts: a large negative activation is selected
    fp = TopHashFingerprinter(perm, 3)
    assert torch.equal(fp.columns(x)[0], perm[hot].sort().values)
    # the background is subtracted first: a neuron that is large for every prompt stops counting
    bg = torch.zeros(D)
    bg[17] = -4.0
    x2 = x.clone()
    x2[60] = 1.0
    fp_bg = TopHashFingerprinter(perm, 3, bg)
    assert torch.equal(fp_bg.columns(x2)[0], perm[torch.tensor([5, 40, 60])].sort().values)


def test_generate_mask_of_a_sequence_pools_over_tokens():
    fp = TopHashFingerprinter(generate_permutation(D, 0), K)
    seq = torch.randn(7, D, generator=torch.Generator().manual_seed(4))
    assert torch.equal(fp.generate_mask(seq), fp.generate_mask(seq.mean(0)))


def test_pool_ignores_padding():
    x = torch.randn(2, 4, D, generator=torch.Generator().manual_seed(5))
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    x_pad = x.clone()
    x_pad[0, 0] = 1e6  # whatever sits under a pad token must not matter
    pooled = TopHashFingerprinter.pool(x_pad, mask)
    assert torch.allclose(pooled[0], x[0, 1:].mean(0), atol=1e-6)
    assert torch.allclose(pooled[1], x[1].mean(0), atol=1e-6)


@pytest.mark.parametrize("top_k", [0, D + 1])
def test_top_k_out_of_range(top_k):
    with pytest.raises(InvalidInputError):
        TopHashFingerprinter(generate_permutation(D), top_k)


def test_shape_errors():
    fp = TopHashFingerprinter(generate_permutation(D), K)
    with pytest.raises(InvalidInputError, match="features"):
        fp.columns(torch.randn(2, D + 1))
    with pytest.raises(InvalidInputError, match="background"):
        TopHashFingerprinter(generate_permutation(D), K, background=torch.zeros(D - 1))


def test_fingerprinter_save_load_round_trip(tmp_path):
    x = acts(8, seed=2)
    fp = TopHashFingerprinter(generate_permutation(D, 5), K)
    fp.fit_background(acts(20, seed=9))
    path = tmp_path / "fp.safetensors"
    fp.save(path)
    back = TopHashFingerprinter.load(path)
    assert back.top_k == K and back.digest() == fp.digest()
    assert torch.equal(back.background, fp.background)
    assert torch.equal(back.columns(x), fp.columns(x))
    # the digest changes with anything the masks depend on
    assert TopHashFingerprinter(fp.permutation, K + 1, fp.background).digest() != fp.digest()
    assert TopHashFingerprinter(fp.permutation, K).digest() != fp.digest()


def test_fingerprinter_load_refuses_a_corrupt_file(tmp_path):
    path = tmp_path / "fp.safetensors"
    path.write_bytes(b"\x00" * 40)
    with pytest.raises(CorruptStoreError):
        TopHashFingerprinter.load(path)
    save_file({"permutation": torch.arange(D)}, str(path))  # no background, no top_k metadata
    with pytest.raises(CorruptStoreError):
        TopHashFingerprinter.load(path)


def test_same_masks_in_a_fresh_process(tmp_path):
    """Masks depend on nothing process-local (no hash(), no global RNG): another interpreter agrees."""
    x = acts(6, seed=11)
    fp = TopHashFingerprinter(generate_permutation(D, 2), K)
    fp.fit_background(acts(10, seed=12))
    fp.save(tmp_path / "fp.safetensors")
    save_file({"x": x}, str(tmp_path / "x.safetensors"))
    code = (
        "import sys, torch\n"
        "from safetensors.torch import load_file, save_file\n"
        "from sam.core.fingerprinter import TopHashFingerprinter, generate_permutation\n"
        "d = sys.argv[1]\n"
        "x = load_file(d + '/x.safetensors')['x']\n"
        "torch.manual_seed(999)\n"  # the global RNG must not matter
        "fp = TopHashFingerprinter.load(d + '/fp.safetensors')\n"
        "fresh = TopHashFingerprinter(generate_permutation(fp.size, 2), fp.top_k, fp.background)\n"
        "save_file({'a': fp.columns(x), 'b': fresh.columns(x)}, d + '/out.safetensors')\n"
    )
    env = {"PYTHONHASHSEED": "4242", "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, cwd=REPO, env=env, timeout=120)
    from safetensors.torch import load_file

    out = load_file(str(tmp_path / "out.safetensors"))
    assert torch.equal(out["a"], fp.columns(x))
    assert torch.equal(out["b"], fp.columns(x))


@pytest.mark.slow  # two interpreters importing torch (~8 s on 2 busy cores) for a helper script
def test_generate_permutation_script(tmp_path):
    out = tmp_path / "data" / "perm_64.safetensors"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "generate_permutation.py"), "--hidden_size", "64",
                           "--output", str(out), "--seed", "5"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert str(out) in proc.stdout and "64" in proc.stdout
    assert torch.equal(load_permutation(out), generate_permutation(64, 5))
    bad = subprocess.run([sys.executable, str(REPO / "scripts" / "generate_permutation.py"), "--hidden_size", "0",
                          "--output", str(tmp_path / "p.safetensors")], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "positive" in bad.stderr and not (tmp_path / "p.safetensors").exists()
