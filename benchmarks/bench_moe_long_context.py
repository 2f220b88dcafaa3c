"""torchtitan's DeepSeek-V3 with expert parallelism planned on fake tensors,
the router's own topk assumed balanced (NOTE [Routing on fake tensors]):
16B with EP 8 in a world of 64, and 671B with EP 64 in a world of 1,024,
FSDP over the rest, sequence 4,096, one forward and backward. Prints each
plan's wall time, the process's peak RSS, the rank's memory peak and the
ledger of the "ep" group.

    python benchmarks/bench_moe.py [--only 16B]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

PLANS = {"16B": (64, 8), "671B": (1024, 64)}


def child(flavor: str) -> None:
    import warnings

    warnings.simplefilter("ignore")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
    from test_torchtitan_moe import step

    from pytest_fakepg import FakeWorld

    world_size, ep = PLANS[flavor]
    started = time.perf_counter()
    with FakeWorld(world_size, rank=world_size - 1, tensors="fake") as world:
        step(world, ep=ep, force_balance=False, seq_len=4096, flavor=flavor)
        seconds = time.perf_counter() - started
        print(json.dumps({"seconds": seconds, "rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                          "peak_gib": world.memory.peak / 2**30, "ep": world.collectives.ledger()["ep"]}))


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
        world_size, ep = PLANS[flavor]
        print(f"DeepSeek-V3 {flavor}, EP {ep} in {world_size}: {got['seconds']:.1f} s, {got['rss_gib']:.2f} GiB RSS, "
              f"rank peak {got['peak_gib']:.0f} GiB; ep: {got['ep']}")


if __name__ == "__main__":
    main()
