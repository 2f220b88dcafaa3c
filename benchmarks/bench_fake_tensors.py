"""Will it fit? One training step of a Llama 3 plan at scale, on fake tensors.

Each plan runs in a fresh subprocess: a FakeWorld with tensors="fake" (the
ledger and memory on, as in a test), the model built the torchtitan way
(examples/llama.py: on the meta device, parallelized there, ``to_empty``,
``init_weights``), one step - forward, loss, backward,
AdamW - and the rank's ledger and memory read back. Reported: wall time of
the whole subprocess body (world up to world down), peak RSS of the
subprocess, the rank's memory peak, and bytes sent per mesh dimension. The
baseline row is the same step of the "debug" model at 8 ranks, in the same
command, and each wall time is also given as a multiple of it: cost grows
with the number of ops a step runs (layers), not with world size or
parameter bytes.

    python benchmarks/bench_fake_tensors.py [--plans 8B-fsdp,8B-fsdp-tp,70B-fsdp-tp]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# name -> (model, world size, mesh, batch, sequence length)
PLANS = {
    "debug-fsdp-tp": ("debug", 8, {"dp": 4, "tp": 2}, 1, 256),
    "8B-fsdp": ("8B", 1024, {"dp": 1024}, 1, 8192),
    "8B-fsdp-tp": ("8B", 1024, {"dp": 128, "tp": 8}, 1, 8192),
    "8B-fsdp-tp-8192": ("8B", 8192, {"dp": 1024, "tp": 8}, 1, 8192),
    "70B-fsdp-tp": ("70B", 1024, {"dp": 128, "tp": 8}, 1, 8192),
}


def child(name: str) -> dict[str, object]:
    import resource
    import warnings

    warnings.simplefilter("ignore")
    sys.path.insert(0, str(EXAMPLES))
    import torch
    from llama import build, train_step
    from torch.distributed.device_mesh import init_device_mesh

    from pytest_fakepg import FakeWorld

    model_name, size, mesh, batch, seq = PLANS[name]
    start = time.perf_counter()
    with FakeWorld(size, rank=size - 1, tensors="fake") as world:
        dims = init_device_mesh("cpu", tuple(mesh.values()), mesh_dim_names=tuple(mesh))
        model = build(model_name, seq, dims)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        world.collectives.clear()
        train_step(model, optimizer, batch, seq)
        ledger = world.collectives.ledger()
        peak, at_peak = world.memory.peak, world.memory.at_peak
    seconds = time.perf_counter() - start
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    per_dim = {dim: sum(op["bytes"] for op in ops.values()) for dim, ops in ledger.items()}
    calls = sum(op["calls"] for ops in ledger.values() for op in ops.values())
    return {"seconds": seconds, "rss_mib": rss_mib, "peak": peak, "at_peak": at_peak, "per_dim": per_dim,
            "calls": calls}


def run(name: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", name], capture_output=True, text=True, check=False
    )
    if out.returncode:
        raise RuntimeError(f"{name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--plans", default=",".join(PLANS), help="comma-separated plan names")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child)))
        return
    print("| plan | world | wall time (x the debug plan) | process peak RSS | rank memory peak (params / grads / "
          "optimizer / activations) | sent per step, by mesh dimension |")
    print("|---|---|---|---|---|---|")
    baseline = run("debug-fsdp-tp")["seconds"]
    for name in args.plans.split(","):
        r = run(name)
        _, size, mesh, _, _ = PLANS[name]
        dims = ", ".join(f"{d} {gib(b)}" for d, b in r["per_dim"].items())  # type: ignore[union-attr]
        shape = " x ".join(f"{d} {s}" for d, s in mesh.items())
        ratio = r["seconds"] / baseline  # type: ignore[operator]
        print(f"| {name} | {size:,} ({shape}) | {r['seconds']:.1f} s ({ratio:.1f}x) | {r['rss_mib']:.0f} MiB | "
              f"{gib(r['peak'])} ({' / '.join(gib(v) for v in list(r['at_peak'].values())[:4])}) | "  # type: ignore
              f"{r['calls']} calls: {dims} |")


if __name__ == "__main__":
    main()
