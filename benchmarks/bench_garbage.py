"""What collecting a world's own garbage as it goes down costs (NOTE [A
world's garbage goes with it]): worlds of 4 with a mesh, one all_reduce and
a DTensor op, uniform and exact, with the collection against without it,
interleaved in one process.

    python benchmarks/bench_garbage.py [--worlds 30] [--rounds 6]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--worlds", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    import torch
    import torch.distributed as dist
    from torch.distributed.tensor import Shard, distribute_tensor

    from pytest_fakepg import FakeWorld, garbage

    fence = garbage.fence

    def world(values: str) -> None:
        with FakeWorld(4, mesh={"dp": 2, "tp": 2}, values=values) as w:
            def program() -> None:
                t = torch.ones(4)
                dist.all_reduce(t)
                distribute_tensor(torch.ones(4, 4), w.mesh, [Shard(0), Shard(1)]).sum()

            w.run(program) if values == "exact" else program()

    lines = ["| world of 4 | ms, collected as it goes down | ms, left to the collector | ratio |", "|---|---|---|---|"]
    try:
        for values in ("uniform", "exact"):
            times: dict[str, list[float]] = {"fenced": [], "not": []}
            for _ in range(args.rounds):
                for name, fn in (("fenced", fence), ("not", lambda: "off")):
                    garbage.fence = fn
                    start = time.perf_counter()
                    for _ in range(args.worlds):
                        world(values)
                    times[name].append((time.perf_counter() - start) / args.worlds * 1e3)
            fenced, not_ = statistics.median(times["fenced"]), statistics.median(times["not"])
            lines.append(f"| {values} | {fenced:.3f} | {not_:.3f} | **{fenced / not_:.3f}x** |")
    finally:
        garbage.fence = fence
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main()
