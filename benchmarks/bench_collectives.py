"""Per-collective cost on the fakepg backend against torch's stock fake backend.

Each configuration runs in its own world in this one process; rounds
alternate between configurations so drift on a noisy machine hits all alike.
Reported: median microseconds per call and the ratio to the stock backend.

    python benchmarks/bench_collectives.py [--calls 2000] [--rounds 15]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from typing import Callable

import torch
import torch.distributed as dist

from pytest_fakepg import FakeWorld

WORLD = 4
CONFIGS = {
    "stock fake": dict(backend="fake"),
    "fakepg, recording": dict(backend="fakepg", record=True),
    "fakepg, not recording": dict(backend="fakepg", record=False),
    "fakepg copy, recording": dict(backend="fakepg", record=True, values="copy"),
}


def ops() -> dict[str, Callable[[], Callable[[], object]]]:
    """Each op: a factory building its tensors once, returning the call."""

    def all_reduce() -> Callable[[], object]:
        t = torch.ones(64)
        return lambda: dist.all_reduce(t)

    def all_gather_into_tensor() -> Callable[[], object]:
        out, inp = torch.empty(64 * WORLD), torch.ones(64)
        return lambda: dist.all_gather_into_tensor(out, inp)

    def reduce_scatter_tensor() -> Callable[[], object]:
        out, inp = torch.empty(64), torch.ones(64 * WORLD)
        return lambda: dist.reduce_scatter_tensor(out, inp)

    def all_to_all_single() -> Callable[[], object]:
        out, inp = torch.empty(64 * WORLD), torch.ones(64 * WORLD)
        return lambda: dist.all_to_all_single(out, inp)

    return {f.__name__: f for f in (all_reduce, all_gather_into_tensor, reduce_scatter_tensor, all_to_all_single)}


def time_calls(config: dict, make: Callable[[], Callable[[], object]], calls: int) -> float:
    with FakeWorld(WORLD, **config):
        call = make()
        for _ in range(50):
            call()
        start = time.perf_counter()
        for _ in range(calls):
            call()
        return (time.perf_counter() - start) / calls * 1e6


def measure(calls: int, rounds: int) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    for op, make in ops().items():
        samples: dict[str, list[float]] = {name: [] for name in CONFIGS}
        for _ in range(rounds):
            for name, config in CONFIGS.items():
                samples[name].append(time_calls(config, make, calls))
        results[op] = {name: statistics.median(s) for name, s in samples.items()}
    return results


def table(results: dict[str, dict[str, float]]) -> str:
    names = list(CONFIGS)
    head = "| op | " + " | ".join(f"{n} (µs)" for n in names) + " | fakepg recording / stock |"
    lines = [head, "|" + "---|" * (len(names) + 2)]
    for op, row in results.items():
        ratio = row["fakepg, recording"] / row["stock fake"]
        lines.append(f"| {op} | " + " | ".join(f"{row[n]:.2f}" for n in names) + f" | **{ratio:.2f}x** |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore", FutureWarning)
    out = table(measure(args.calls, args.rounds))
    print(out)
    return out


if __name__ == "__main__":
    main()
