"""Exact worlds (values="exact") against torch's own harnesses, per test.

Same bodies, each harness in its own pytest subprocess (bench_pytest's timing
plugin: setup + call + teardown, median per test):

* trivial: a rank-valued all_reduce at world 4, against MultiThreadedTestCase
  and LocalDTensorTestBase (where, SPMD only, the ranks' values are a
  LocalTensor);
* parity: tensor parallelism (Colwise/Rowwise) and FSDP2 trained 3 steps
  against one device, against MultiProcessTestCase on gloo;
* DTensor's sharding decisions shared across worlds, against made afresh in
  every world (as before), for the parity bodies in exact and uniform worlds;
* memory: peak RSS of an exact world as ranks and tensor sizes grow.

    python benchmarks/bench_exact.py [--tests 200] [--skip-mp] [--trivial-only]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_pytest  # noqa: E402

TRIVIAL = """
    def test_{i}({args}):
        t = torch.tensor([float({rank})])
        dist.all_reduce(t)
        assert t.item() == 6.0
"""

# The model the parity bodies train (bench_unittest.py's classes use it too).
MLP = '''
class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.w1 = nn.Linear(8, 16)
        self.w2 = nn.Linear(16, 8)
    def forward(self, x):
        return self.w2(torch.relu(self.w1(x)))
'''

PARITY = '''
import torch.nn as nn
CHECK = globals().get("CHECK", True)  # values are exact: compare with one device
from torch.distributed.device_mesh import init_device_mesh
''' + MLP + '''

def train(model, batch, steps=3):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for _ in range(steps):
        loss = model(batch).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.detach())
    return losses

def tp_parity(rank):
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module
    batch = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0); ref = MLP(); want = train(ref, batch)
    torch.manual_seed(0); model = MLP()
    parallelize_module(model, init_device_mesh("cpu", (4,)), {"w1": ColwiseParallel(), "w2": RowwiseParallel()})
    got = train(model, batch)
    if not CHECK:
        return
    torch.testing.assert_close(torch.stack([l.full_tensor() if hasattr(l, "full_tensor") else l for l in got]),
                               torch.stack(want))
    for name, p in ref.named_parameters():
        torch.testing.assert_close(model.get_parameter(name).full_tensor(), p.detach())

def fsdp_parity(rank):
    from torch.distributed.fsdp import fully_shard
    batch = torch.randn(8, 8, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0); ref = MLP(); want = train(ref, batch)
    torch.manual_seed(0); model = MLP()
    mesh = init_device_mesh("cpu", (4,))
    fully_shard(model.w1, mesh=mesh); fully_shard(model, mesh=mesh)
    got = torch.stack(train(model, batch[rank * 2:rank * 2 + 2]))
    if not CHECK:
        return
    dist.all_reduce(got, op=dist.ReduceOp.AVG)
    torch.testing.assert_close(got, torch.stack(want))
    for name, p in ref.named_parameters():
        torch.testing.assert_close(model.get_parameter(name).full_tensor(), p.detach())
'''

# Each rank plans its DTensor work itself, as before the ranks of an exact
# world shared it (NOTE [Sharing rank-free work]).
NOT_SHARED = "from pytest_fakepg.exact import sharing\nsharing.SharedPlanning.patches = lambda self: []\n"


def _marked(marker: str, n: int, body: str, header: str = "") -> str:
    return bench_pytest.HEADER + header + PARITY + "".join(
        marker + "\n" + textwrap.dedent(body).format(i=i, args="rank", rank="rank") for i in range(n))


STYLES = {
    "exact marker": lambda n, body: _marked("@pytest.mark.fake_world(4, values='exact')", n, body),
    "exact marker, planned per rank": lambda n, body: _marked(
        "@pytest.mark.fake_world(4, values='exact')", n, body, NOT_SHARED),
    "MultiThreadedTestCase": lambda n, body: bench_pytest.HEADER + PARITY + textwrap.dedent("""
        from torch.testing._internal.common_distributed import MultiThreadedTestCase
        class TestThreaded(MultiThreadedTestCase):
            @property
            def world_size(self):
                return 4
            def setUp(self):
                super().setUp()
                self._spawn_threads()
        """) + "".join(textwrap.indent(textwrap.dedent(body).format(i=i, args="self", rank="self.rank"), "    ")
                       for i in range(n)),
    "LocalDTensorTestBase": lambda n, body: bench_pytest.HEADER + PARITY + textwrap.dedent("""
        from torch.distributed._local_tensor import LocalTensor
        from torch.testing._internal.distributed._tensor.common_dtensor import LocalDTensorTestBase, with_comms
        class TestLocal(LocalDTensorTestBase):
            @property
            def world_size(self):
                return 4
        """) + "".join(
            f"    @with_comms\n    def test_{i}(self):\n"
            "        t = LocalTensor({r: torch.tensor([float(r)]) for r in range(4)})\n"
            "        dist.all_reduce(t)\n"
            "        assert all(x.item() == 6.0 for x in t._local_tensors.values())\n" for i in range(n)),
    "MultiProcessTestCase (gloo)": lambda n, body: bench_pytest.HEADER + PARITY + textwrap.dedent("""
        from torch.testing._internal.common_distributed import MultiProcessTestCase
        class TestProcs(MultiProcessTestCase):
            @property
            def world_size(self):
                return 4
            def setUp(self):
                super().setUp()
                self._spawn_processes()
        """) + "".join(textwrap.indent(textwrap.dedent(
            body.replace("    def test_{i}({args}):\n", "    def test_{i}({args}):\n"
                         "        dist.init_process_group('gloo', rank=self.rank, world_size=4, "
                         "init_method=f'file://{{self.file_name}}')\n")).format(i=i, args="self", rank="self.rank"),
            "    ") for i in range(n)),
}

BODIES = {
    "tp": "\n    def test_{i}({args}):\n        tp_parity({rank})\n",
    "fsdp2": "\n    def test_{i}({args}):\n        fsdp_parity({rank})\n",
}


def run(style: str, n: int, body: str, workdir: Path) -> float:
    bench_pytest.STYLES[style] = lambda n_, ws_: STYLES[style](n_, body)
    return statistics.median(bench_pytest.run_style(style, n, 4, workdir)) * 1e3


def memory(workdir: Path) -> list[tuple[int, int, float]]:
    """Peak RSS (MiB) above an idle world of 2, for each (ranks, floats per rank)."""
    script = textwrap.dedent("""
        import resource, sys, torch, torch.distributed as dist
        from pytest_fakepg import ExactWorld
        ranks, numel = int(sys.argv[1]), int(sys.argv[2])
        with ExactWorld(ranks) as world:
            def program():
                t = torch.full((numel,), float(dist.get_rank()))
                dist.all_reduce(t)
                assert t[0].item() == sum(range(ranks))
            world.run(program)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    """)
    path = workdir / "mem.py"
    path.write_text(script)

    def peak(ranks: int, numel: int) -> float:
        out = subprocess.run([sys.executable, str(path), str(ranks), str(numel)], check=True,
                             capture_output=True, text=True)
        return float(out.stdout.split()[-1])

    base = peak(2, 1)
    return [(r, n, peak(r, n) - base) for r in (4, 16, 64) for n in (1, 1 << 20)]


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tests", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-mp", action="store_true", help="skip MultiProcessTestCase (seconds a test)")
    parser.add_argument("--trivial-only", action="store_true", help="only the trivial test's table (a minute)")
    args = parser.parse_args(argv)
    lines = ["| test (world 4) | harness | ms per test | exact is faster by |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        trivial: dict[str, list[float]] = {}
        for _ in range(args.rounds):  # interleaved, so drift hits each alike
            for style, n in (("exact marker", args.tests), ("MultiThreadedTestCase", max(20, args.tests // 4)),
                             ("LocalDTensorTestBase", max(20, args.tests // 4))):
                trivial.setdefault(style, []).append(run(style, n, TRIVIAL, work))
        ms = {s: statistics.median(v) for s, v in trivial.items()}
        base = ms["exact marker"]
        for style, value in ms.items():
            faster = "" if style == "exact marker" else f"**{value / base:.2f}x**"
            lines.append(f"| rank-valued all_reduce | {style} | {value:.3f} | {faster} |")
        shared: list[str] = []
        if args.trivial_only:
            text = "\n".join(lines)
            print(text)
            return text
        for name, body in BODIES.items():
            exact = statistics.median(run("exact marker", 20, body, work) for _ in range(args.rounds))
            lines.append(f"| {name} parity, 3 steps | exact marker | {exact:.3f} | |")
            alone = statistics.median(run("exact marker, planned per rank", 20, body, work) for _ in range(args.rounds))
            shared.append(f"| {name}, 3 steps | {exact:.1f} | {alone:.1f} | **{alone / exact:.1f}x** |")
            if not args.skip_mp:
                mp = run("MultiProcessTestCase (gloo)", 2, body, work)
                lines.append(f"| {name} parity, 3 steps | MultiProcessTestCase (gloo) | {mp:.1f} | "
                             f"**{mp / exact:.0f}x** |")
        mem = memory(work)
    header = ("| exact test (world 4), 20 in one process | ms, planning shared by the ranks | "
              "ms, each rank plans | shared is faster by |")
    lines += ["", header, "|---|---|---|---|", *shared]
    lines += ["", "| ranks | floats per rank | peak RSS above a world of 2 (MiB) |", "|---|---|---|"]
    lines += [f"| {r} | {n:,} | {mib:.1f} |" for r, n, mib in mem]
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main()
