"""The skinny products of an edit's step on the CPU: torch's GEMM against oneDNN on a weight reordered once.

Times, on the default model's own weights, the products sam/core/packed.py's docstring names: the edited
layer's down-projection (12, 1536) x (1536, 576) in fp32, and lm_head's bf16 copy forwards
(12, 576) x (576, V) and backwards (12, V) x (V, 576). The same inputs alternate between the two paths
(median of --repeats, weights out of cache: a large buffer is swept between calls), and the results are
compared. Prints a rich table and writes results/edit/packed_products_cpu.json.

    python scripts/bench_packed.py --repeats 200
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from sam.bench.results import write_result  # noqa: E402
from sam.config import EditorConfig  # noqa: E402
from sam.core.model_loader import load_model  # noqa: E402
from sam.core.packed import PackedWeight, packable  # noqa: E402


def _median_ms(fn, repeats: int, sweep: torch.Tensor) -> float:
    times = []
    for _ in range(repeats):
        sweep.add_(1.0)  # evicts the weight from the caches, as the layers between two uses of it do
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--positions", type=int, default=12, help="rows of the input (3 prompts x the answer's tokens)")
    p.add_argument("--out", type=Path, default=Path("results/edit"))
    a = p.parse_args(argv)
    model = load_model("default", device="cpu").model
    layers = model.model.layers
    down = layers[EditorConfig().resolved_layer(len(layers))].mlp.down_proj.weight.detach()  # the edited layer's
    head = model.get_output_embeddings().weight.detach().to(torch.bfloat16)  # (V, 576): lm_head's bf16 copy
    torch.manual_seed(0)
    sweep = torch.zeros(64 * 2**20 // 4)  # 64 MB, more than the caches
    cases = []
    for name, weight, dtype in (("down-projection fp32", down, torch.float32),
                                ("lm_head bf16 forward", head, torch.bfloat16),
                                ("lm_head bf16 backward", head, torch.bfloat16)):
        if not packable(weight, dtype):
            print(f"{name}: oneDNN cannot take this weight here; skipped")
            continue
        packed = PackedWeight(weight, dtype)
        if name.endswith("backward"):
            x = torch.randn(a.positions, weight.shape[0]).to(dtype)  # (M, V)
            plain, fast = (lambda: x @ weight), (lambda: packed.input_grad(x))
        else:
            x = torch.randn(a.positions, weight.shape[1]).to(dtype)  # (M, d_in)
            plain, fast = (lambda: x @ weight.T), (lambda: packed.forward(x))
        diff = float(((fast().float() - plain().float()).abs().max()) / plain().float().abs().max())
        t_plain, t_fast = [], []
        for _ in range(4):  # the paths alternate in rounds, so drift hits both
            t_plain.append(_median_ms(plain, a.repeats // 4, sweep))
            t_fast.append(_median_ms(fast, a.repeats // 4, sweep))
        cases.append({"product": name, "input": list(x.shape), "weight": list(weight.shape),
                      "torch_ms": statistics.median(t_plain), "onednn_ms": statistics.median(t_fast),
                      "max_relative_difference": diff})
    table = Table(title=f"one product of an edit's step, {a.positions} positions, median ms "
                        f"({torch.get_num_threads()} threads)")
    for col in ("product", "torch", "oneDNN, reordered", "max rel. diff"):
        table.add_column(col, justify="left" if col == "product" else "right")
    for c in cases:
        table.add_row(c["product"], f"{c['torch_ms']:.3f}", f"{c['onednn_ms']:.3f}",
                      f"{c['max_relative_difference']:.1e}")
    Console().print(table)
    res = {"threads": torch.get_num_threads(), "positions": a.positions, "repeats": a.repeats, "cases": cases}
    write_result(a.out, "packed_products_cpu", res)
    return res


if __name__ == "__main__":
    main()
