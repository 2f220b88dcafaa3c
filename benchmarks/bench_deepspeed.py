"""A DeepSpeed ZeRO-3 plan at scale (issue: 1-8 minutes for a 1B model at
1,024 ranks, mostly in fake ``narrow``): the view ops a fake-tensor world
runs on their meta kernels directly, against torch's own FakeTensorMode in
the same process; and one ZeRO-3 step of a 1B model (60 x Linear(4096,
4096), bf16) at 1,024 ranks, start to end, with its memory per rank.

    python benchmarks/bench_deepspeed.py [--ranks 1024] [--layers 60] [--calls 3000]

Needs DeepSpeed (.ci/clients.txt); without it only the narrow ratio runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings


def narrow_us(calls: int, ours: bool) -> float:
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from pytest_fakepg import FakeWorld

    def loop() -> float:
        flat = torch.empty(1 << 24)
        start = time.perf_counter()
        for i in range(calls):
            flat.narrow(0, i * 100, 100)
        return (time.perf_counter() - start) / calls * 1e6

    if ours:
        with FakeWorld(8, tensors="fake"):
            return loop()
    with FakeTensorMode():
        return loop()


def zero3_plan(ranks: int, layers: int) -> tuple[float, dict[str, int]]:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    import torch

    from pytest_fakepg import FakeWorld

    start = time.perf_counter()
    with FakeWorld(ranks, tensors="fake") as world:
        model = torch.nn.Sequential(*[torch.nn.Linear(4096, 4096) for _ in range(layers)])
        config = {"train_batch_size": 2 * ranks, "train_micro_batch_size_per_gpu": 2, "bf16": {"enabled": True},
                  "zero_optimization": {"stage": 3}, "gradient_clipping": 1.0,
                  "optimizer": {"type": "Adam", "params": {"lr": 1e-3, "torch_adam": True}}}
        deepspeed.init_distributed(dist_backend="gloo")
        engine, *_ = deepspeed.initialize(model=model, config=config, model_parameters=model.parameters())
        loss = engine(torch.randn(2, 4096, dtype=torch.bfloat16)).float().sum()
        engine.backward(loss)
        engine.step()
        current = world.memory.current
    return time.perf_counter() - start, current


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ranks", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=60)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.rounds):
        for ours in (True, False):
            times[ours].append(narrow_us(args.calls, ours))
    ours, theirs = statistics.median(times[True]), statistics.median(times[False])
    lines = ["| what | figure |", "|---|---|",
             f"| a fake `narrow` in a world / in torch's FakeTensorMode | {ours:.0f} / {theirs:.0f} us "
             f"({theirs / ours:.1f}x faster) |"]
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        lines.append("| ZeRO-3 plan | DeepSpeed is not installed |")
    else:
        seconds, current = zero3_plan(args.ranks, args.layers)
        mib = ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in current.items() if v)
        lines.append(f"| ZeRO-3 step, {args.layers * 16.8:.0f}M parameters, bf16, {args.ranks} ranks | "
                     f"{seconds:.1f} s start to end; rank 0 after the step: {mib} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(main())
