"""Scale: one world of up to a million ranks, and one test issuing a million
collectives.

World: set up and tear down a world with a 3-D named mesh, on pytest-fakepg
and on the stock path (torch's fake backend with init_device_mesh), each in a
fresh subprocess; time and peak memory above the process's footprint after
imports. Log: time per call in successive blocks of 100,000 all_reduce calls
(flat means no growth with the log's length), memory per record, and the cost
of reading the whole log back.

    python benchmarks/bench_scale.py [--max-ranks 1048576] [--calls 1000000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

MESHES = {
    8: (2, 2, 2),
    1024: (4, 32, 8),
    131_072: (16, 1024, 8),
    1_048_576: (16, 8192, 8),
}


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def child_world(path: str, shape: tuple[int, ...]) -> dict[str, float]:
    import warnings

    import torch
    import torch.distributed as dist
    import torch.testing._internal.distributed.fake_pg  # noqa: F401  registers "fake"
    from torch.distributed.device_mesh import init_device_mesh

    from pytest_fakepg import FakeWorld

    warnings.simplefilter("ignore")
    names = ("pp", "dp", "tp")
    size = shape[0] * shape[1] * shape[2]
    if path == "fakepg":
        FakeWorld(8, mesh=dict(zip(names, (2, 2, 2)))).start().stop()  # load the backend
    before = _rss_kib("VmRSS")
    start = time.perf_counter()
    if path == "fakepg":
        world = FakeWorld(size, mesh=dict(zip(names, shape))).start()
        assert world.mesh["tp"].size() == shape[2]
        up = time.perf_counter()
        world.stop()
    else:
        dist.init_process_group("fake", rank=0, world_size=size, store=dist.HashStore())
        mesh = init_device_mesh("cpu", shape, mesh_dim_names=names)
        assert mesh["tp"].size() == shape[2]
        up = time.perf_counter()
        dist.destroy_process_group()
    end = time.perf_counter()
    del torch
    return {"up_s": up - start, "total_s": end - start, "peak_mb": (_rss_kib("VmHWM") - before) / 1024}


def child_log(calls: int) -> dict[str, object]:
    import warnings

    import torch
    import torch.distributed as dist

    from pytest_fakepg import FakeWorld

    warnings.simplefilter("ignore")
    block = 100_000
    t = torch.ones(4)
    with FakeWorld(4) as world:
        before = _rss_kib("VmRSS")
        per_block = []
        for _ in range(calls // block):
            start = time.perf_counter()
            for _ in range(block):
                dist.all_reduce(t)
            per_block.append((time.perf_counter() - start) / block * 1e6)
        grown = (_rss_kib("VmRSS") - before) * 1024
        log = world.collectives
        start = time.perf_counter()
        count, nbytes = log.count("all_reduce"), log.total_bytes()
        count_s = time.perf_counter() - start
        start = time.perf_counter()
        ops = log.ops
        ops_s = time.perf_counter() - start
        start = time.perf_counter()
        total = sum(r.bytes for r in log)
        iter_s = time.perf_counter() - start
        assert count == len(ops) == calls and total == nbytes == calls * 16
    return {
        "us_per_call_by_block": per_block,
        "bytes_per_record": grown / calls,
        "count_and_bytes_s": count_s,
        "ops_s": ops_s,
        "iterate_s": iter_s,
    }


def run_child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-ranks", type=int, default=1_048_576)
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        if kind == "world":
            result = child_world(rest[0], tuple(int(x) for x in rest[1].split("x")))
        else:
            result = child_log(int(rest[0]))
        print(json.dumps(result))
        return ""

    lines = [
        "| ranks | mesh | fakepg up+down (s) | fakepg peak (MB) | stock up+down (s) | stock peak (MB) | speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    for size, shape in MESHES.items():
        if size > args.max_ranks:
            continue
        text = "x".join(map(str, shape))
        ours = run_child("world", "fakepg", text)
        stock = run_child("world", "stock", text)
        lines.append(
            f"| {size:,} | {shape} | {ours['total_s']:.3f} | {ours['peak_mb']:.0f} | "
            f"{stock['total_s']:.3f} | {stock['peak_mb']:.0f} | {stock['total_s'] / ours['total_s']:.1f}x |"
        )
    log = run_child("log", str(args.calls))
    blocks = log["us_per_call_by_block"]
    lines += [
        "",
        f"Log under load: {args.calls:,} all_reduce calls with recording on; µs per call by block of "
        f"100,000: {', '.join(f'{b:.2f}' for b in blocks)} (last/first {blocks[-1] / blocks[0]:.2f}x); "
        f"{log['bytes_per_record']:.0f} bytes of memory per record; reading back: count+total_bytes "
        f"{log['count_and_bytes_s'] * 1e3:.1f} ms, ops {log['ops_s'] * 1e3:.0f} ms, iterating every "
        f"record {log['iterate_s']:.2f} s.",
    ]
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main()
