"""What dropping compiled code at world teardown costs.

A function compiled with torch.compile guards on the process group it saw, so
in the next world it recompiles whether or not the old code is dropped; a
FakeWorld drops it (``torch._dynamo.reset_code_caches``) when dynamo compiled
anything during the world, so that the recompile limit is never reached.
Measured in this one process, median of many worlds:

- a world whose test compiles nothing: the check costs one counter read;
- a world whose test calls a compiled function: up, call (recompile), down,
  with the reset, against the same without it (possible for the first 7
  worlds only: the 9th hits the limit).

    python benchmarks/bench_compile.py [--worlds 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol

from pytest_fakepg import FakeWorld, _compat


def per_world(worlds: int, reset: bool) -> list[float]:
    import torch._dynamo

    torch._dynamo.reset()

    @torch.compile(fullgraph=True, backend="eager")
    def reduce_twice(x: torch.Tensor) -> torch.Tensor:
        return funcol.all_reduce(x, "sum", dist.group.WORLD) * 2

    original = _compat.dynamo.reset_compiled_code
    if not reset:
        _compat.dynamo.reset_compiled_code = lambda: None  # type: ignore[assignment]
    times = []
    try:
        for _ in range(worlds):
            start = time.perf_counter()
            with FakeWorld(4):
                reduce_twice(torch.ones(2))
            times.append(time.perf_counter() - start)
    finally:
        _compat.dynamo.reset_compiled_code = original  # type: ignore[assignment]
    return times[1:]  # the first world compiles either way


def plain_worlds(worlds: int) -> float:
    times = []
    for _ in range(worlds):
        start = time.perf_counter()
        with FakeWorld(4):
            pass
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--worlds", type=int, default=7, help="at most 7: the 9th world without reset fails")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    plain = plain_worlds(200)
    start = time.perf_counter()
    for _ in range(100_000):
        _compat.dynamo.dynamo_frames()
    check_us = (time.perf_counter() - start) / 100_000 * 1e6
    with_reset = statistics.median(per_world(args.worlds + 1, reset=True))
    without = statistics.median(per_world(args.worlds + 1, reset=False))
    text = (
        f"Compiled code across worlds: a world that compiles nothing pays {check_us:.2f} µs for the check "
        f"(a world is {plain * 1e3:.2f} ms up and down); a world whose test calls a compiled function "
        f"takes {with_reset * 1e3:.1f} ms with the reset against {without * 1e3:.1f} ms without it "
        f"({with_reset / without:.2f}x; without it the 9th world fails)."
    )
    print(text)
    return text


if __name__ == "__main__":
    main()
