"""Editing at a real model size: an 8B-shaped Llama (Llama-3-8B's shape) with random weights, in bf16.

    python -m sam.bench.scale --device cuda            # on a GPU with ~40 GB free

A real 8B model cannot be downloaded here, so this measures what does not depend on the weights:
seconds per edit (one at a time and trained in batches), peak GPU memory, and the inference
overhead with 1,000 edits in the store. The memory still trains in fp32 beside the bf16 model. The
tokenizer is SmolLM2's (its ids are a subset of the 128,256-token vocabulary); the facts are the
seeded synthetic ones. Quality on random weights means nothing and is not reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from sam.bench.editing import inference_overhead
from sam.bench.facts import synthetic


def build(device: str, layers: int, tokenizer: Path | None = None):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from sam.core.model_loader import LoadedModel, resolve_model_dir

    tok = AutoTokenizer.from_pretrained(tokenizer or resolve_model_dir("default"))
    cfg = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=layers,
                      num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0,
                      tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.eval().requires_grad_(False)
    tok.pad_token = tok.pad_token or tok.eos_token
    return LoadedModel(model, tok, "llama-8b-shape-random", Path("random")), sum(p.numel() for p in model.parameters())


def main(argv: list[str] | None = None) -> int:
    from sam.config import EditorConfig
    from sam.core.editor import MemoirEditor
    from sam.core.store import Store

    p = argparse.ArgumentParser(prog="sam bench scale", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--edits", type=int, default=1000)
    p.add_argument("--single", type=int, default=20, help="edits timed one at a time")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--out", type=Path, default=Path("results/scale"))
    p.add_argument("--tokenizer", type=Path, help="a folder with the default model's tokenizer files "
                   "(default: the converted default model)")
    args = p.parse_args(argv)
    console = Console()
    cuda = args.device.startswith("cuda")
    t0 = time.perf_counter()
    loaded, n_params = build(args.device, args.layers, args.tokenizer)
    build_s = time.perf_counter() - t0
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    facts = synthetic(args.edits + args.single, seed=7)
    res = {"params": n_params, "layers": args.layers, "dtype": "bfloat16", "device": args.device, "build_s": build_s}
    with tempfile.TemporaryDirectory() as tmp:
        ed = MemoirEditor(loaded, Store(Path(tmp) / "store"), EditorConfig(), args.device)
        res["layer"] = ed.layer
        single = []
        for f in facts[: args.single]:
            t = time.perf_counter()
            r = ed.edit(ed.render(f.question), f.target, source="scale")
            if cuda:
                torch.cuda.synchronize()
            single.append((time.perf_counter() - t, r.steps))
        res["single_median_s"] = statistics.median(s for s, _ in single[1:])  # the first one builds the head copy
        res["single_median_steps"] = statistics.median(n for _, n in single)
        batched, t_all = [], time.perf_counter()
        rest = facts[args.single:]
        for i in range(0, len(rest), args.batch):
            chunk = rest[i: i + args.batch]
            t = time.perf_counter()
            pend = ed.train_many([(ed.render(f.question), f.target) for f in chunk], source="scale")
            ed.commit_many([q for q in pend if q.outcome.finite])
            if cuda:
                torch.cuda.synchronize()
            batched.append((time.perf_counter() - t) / len(chunk))
        res["batched_per_edit_s"] = statistics.median(batched)
        res["batched_wall_s"] = time.perf_counter() - t_all
        res["active_edits"] = len(ed.router)
        res.update({f"infer_{k}": v for k, v in inference_overhead(ed, facts, bs=32).items()})
        if cuda:
            res["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
        ed.close()
    table = Table(title=f"8B-shaped Llama ({n_params / 1e9:.2f} B params, random weights, bf16) on {args.device}")
    for c in ("s/edit one at a time", "steps", f"s/edit, batches of {args.batch}", "edits", "overhead",
              "peak GPU GiB"):
        table.add_column(c, justify="right")
    table.add_row(f"{res['single_median_s']:.3f}", f"{res['single_median_steps']:.0f}",
                  f"{res['batched_per_edit_s']:.4f}", str(res["active_edits"]), f"{res['infer_overhead']:+.1%}",
                  f"{res.get('peak_gpu_gib', float('nan')):.1f}")
    console.print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"scale_8b_{args.device.split(':')[0]}.json"
    path.write_text(json.dumps(res, indent=2))
    console.print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
