"""How close is the fake-tensor memory estimate to what CUDA allocates?

For each plan - 8 blocks 4096 wide (x + W2 relu(W1 x)), FSDP2 or FSDP2 + TP
(tp 8), AdamW, one step on 8,192 tokens - and world size, the last rank's
peak is measured twice, each in a fresh process: with real CUDA tensors in
a fake world (``torch.cuda.max_memory_allocated`` above what was allocated
before the model), and estimated with tensors="fake" (``world.memory.peak``).
Needs a CUDA device (the GPU machine: ``.ci/gpu`` runs it through
tests/test_cuda.py).

    python benchmarks/memory_accuracy.py [--worlds 64,1024]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys


def plan_step(world_size: int, tp: int) -> None:
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    class Wide(torch.nn.Module):
        def __init__(self, d: int = 4096) -> None:
            super().__init__()
            self.w1 = torch.nn.Linear(d, 4 * d, bias=False)
            self.w2 = torch.nn.Linear(4 * d, d, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.w2(torch.relu(self.w1(x)))

    mesh = init_device_mesh("cuda", (world_size // tp, tp), mesh_dim_names=("dp", "tp"))
    with torch.device("meta"):
        model = torch.nn.Sequential(*[Wide() for _ in range(8)])
    for block in model:
        if tp > 1:
            parallelize_module(block, mesh["tp"], {"w1": ColwiseParallel(), "w2": RowwiseParallel()})
        fully_shard(block, mesh=mesh["dp"])
    fully_shard(model, mesh=mesh["dp"])
    model.to_empty(device="cuda")
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model(torch.randn(8192, 4096, device="cuda")).sum().backward()
    optimizer.step()


def child(tensors: str, world_size: int, tp: int) -> int:
    import warnings

    import torch

    from pytest_fakepg import FakeWorld

    warnings.simplefilter("ignore")
    with FakeWorld(world_size, rank=world_size - 1, device="cuda", tensors=tensors) as world:
        if tensors == "fake":
            plan_step(world_size, tp)
            return world.memory.peak
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        plan_step(world_size, tp)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base


def measure(world_size: int, tp: int) -> tuple[int, int]:
    """(estimate, measured) bytes, each from a fresh process."""
    out = []
    for tensors in ("fake", "real"):
        run = subprocess.run([sys.executable, __file__, "--child", tensors, str(world_size), str(tp)],
                             capture_output=True, text=True, check=False)
        if run.returncode:
            raise RuntimeError(f"{tensors} tensors, world {world_size}, tp {tp} failed:\n{run.stderr[-4000:]}")
        out.append(json.loads(run.stdout.strip().splitlines()[-1]))
    return out[0], out[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--worlds", default="64,1024")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        tensors, size, tp = args.child
        print(json.dumps(child(tensors, int(size), int(tp))))
        return
    print("| plan | world | estimate (fake tensors) | max_memory_allocated (real CUDA) | error |")
    print("|---|---|---|---|---|")
    for tp in (1, 8):
        for size in map(int, args.worlds.split(",")):
            estimate, measured = measure(size, tp)
            name = "FSDP2 + TP (tp 8)" if tp > 1 else "FSDP2"
            print(f"| {name} | {size:,} | {estimate / 2**30:.3f} GiB | {measured / 2**30:.3f} GiB | "
                  f"{(estimate - measured) / measured:+.1%} |")


if __name__ == "__main__":
    main()
