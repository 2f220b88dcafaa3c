"""MoE and long context planned on fake tensors, each plan in a process of
its own:

- torchtitan's DeepSeek-V3 with expert parallelism, the router's own topk
  assumed balanced (NOTE [Routing on fake tensors]): 16B with EP 8 in a world
  of 64, and 671B with EP 64 in a world of 1,024, FSDP over the rest,
  sequence 4,096, one forward and backward; and 16B's worst case, expert 0
  every token's first choice (``world.route``), exact along "ep" (the 8
  ranks of one EP group run, each its own program);
- torchtitan's llama3 8B with context parallel 8 x FSDP 128 in a world of
  1,024, sequence 8,192, one forward and backward (NOTE [Context parallel
  on CPU]).

Prints each plan's wall time, the process's peak RSS, the rank's memory
peak and the ledger of the "ep" or "cp" group.

    python benchmarks/bench_moe_long_context.py [--only 16B|16B-hot|671B|8B-cp8]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

# plan: (world size, EP or CP degree)
PLANS = {"16B": (64, 8), "16B-hot": (64, 8), "671B": (1024, 64), "8B-cp8": (1024, 8)}


def child(flavor: str) -> None:
    import warnings

    warnings.simplefilter("ignore")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
    from test_torchtitan_long_context import cp_step
    from test_torchtitan_moe import hot_expert, step

    from pytest_fakepg import ExactWorld, FakeWorld

    world_size, degree = PLANS[flavor]
    started = time.perf_counter()
    if flavor.endswith("-hot"):
        with ExactWorld(mesh={"efsdp": world_size // degree, "ep": degree}, exact_dims="ep", tensors="fake") as world:
            world.route(hot_expert)
            peaks = world.run(lambda: (step(world, ep=degree, force_balance=False, seq_len=4096,
                                            flavor=flavor.removesuffix("-hot")), world.memory.peak)[1])
            print(json.dumps({"seconds": time.perf_counter() - started,
                              "rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                              "peak_gib": max(peaks) / 2**30, "other_peaks_gib": max(peaks[1:]) / 2**30}))
        return
    with FakeWorld(world_size, rank=world_size - 1, tensors="fake") as world:
        if flavor.endswith("-cp8"):
            cp_step(world, "8B", 8192, dp=world_size // degree, cp=degree)
            group = "cp"
        else:
            step(world, ep=degree, force_balance=False, seq_len=4096, flavor=flavor)
            group = "ep"
        seconds = time.perf_counter() - started
        print(json.dumps({"seconds": seconds, "rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                          "peak_gib": world.memory.peak / 2**30, group: world.collectives.ledger()[group]}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child")
    parser.add_argument("--only", choices=sorted(PLANS))
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    for flavor in [args.only] if args.only else PLANS:
        run = subprocess.run([sys.executable, __file__, "--child", flavor], capture_output=True, text=True, check=True)
        got = json.loads(run.stdout.strip().splitlines()[-1])
        world_size, degree = PLANS[flavor]
        what = f"llama3 8B, CP {degree}" if flavor.endswith("-cp8") else f"DeepSeek-V3 {flavor}, EP {degree}"
        group = "cp" if flavor.endswith("-cp8") else "ep"
        if flavor.endswith("-hot"):
            print(f"{what} in {world_size}, expert 0 hot, exact along ep: {got['seconds']:.1f} s, "
                  f"{got['rss_gib']:.2f} GiB RSS, peak of the rank holding it {got['peak_gib']:.1f} GiB, "
                  f"of the others {got['other_peaks_gib']:.1f} GiB")
            continue
        print(f"{what} in {world_size}: {got['seconds']:.1f} s, {got['rss_gib']:.2f} GiB RSS, "
              f"rank peak {got['peak_gib']:.0f} GiB; {group}: {got[group]}")


if __name__ == "__main__":
    main()
