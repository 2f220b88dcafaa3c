"""torch-style unittest classes in exact worlds, against torch's own harnesses.

One ``DTensorTestBase`` class of representative tests (distribute and gather,
redistribute, tensor parallelism forward and backward, a 2-D mesh, ops),
world 4, run three ways, each in its own pytest subprocess (bench_pytest's
timing plugin: setup + call + teardown per test):

* processes: the class as written, a process per rank (gloo);
* LocalTensor: ``create_local_tensor_test_class(cls)`` (torch's one-process way);
* exact: ``pytest_fakepg.create_exact_test_class(cls)``.

and a class of planning-heavy tests at 8 ranks (every placement pair of a
3-D mesh; graph-based plans, even and uneven shapes) under LocalTensor and
exact. Reported: the median per test and the total of the class, with each
harness's ratio to exact measured in the same command.

    python benchmarks/bench_unittest.py [--rounds 3] [--skip-mp]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_exact  # noqa: E402
import bench_pytest  # noqa: E402

CLASS = '''
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module
from torch.distributed.device_mesh import init_device_mesh
from torch.testing._internal.distributed._tensor.common_dtensor import (
    DTensorTestBase, create_local_tensor_test_class, with_comms,
)
from pytest_fakepg import create_exact_test_class
''' + bench_exact.MLP + '''

class Representative(DTensorTestBase):
    @property
    def world_size(self):
        return 4

    @with_comms
    def test_distribute_and_gather(self):
        mesh = self.build_device_mesh()
        full = torch.arange(32.0).reshape(8, 4)
        sharded = distribute_tensor(full, mesh, [Shard(0)])
        self.assertEqual(sharded.to_local().shape, torch.Size([2, 4]))
        self.assertEqual(sharded.full_tensor(), full)

    @with_comms
    def test_redistribute(self):
        mesh = self.build_device_mesh()
        full = torch.arange(64.0).reshape(8, 8)
        for src, dst in [(Shard(0), Replicate()), (Shard(1), Shard(0)), (Replicate(), Shard(1))]:
            moved = distribute_tensor(full, mesh, [src]).redistribute(mesh, [dst])
            self.assertEqual(moved.full_tensor(), full)
        partial = DTensor.from_local(torch.ones(4), mesh, [Partial()])
        self.assertEqual(partial.redistribute(mesh, [Replicate()]).to_local(), torch.full((4,), 4.0))

    @with_comms
    def test_tensor_parallel_step(self):
        mesh = self.build_device_mesh()
        torch.manual_seed(0)
        model, batch = MLP(), torch.randn(4, 8)
        reference = MLP()
        reference.load_state_dict(model.state_dict())
        parallelize_module(model, mesh, {"w1": ColwiseParallel(), "w2": RowwiseParallel()})
        loss = model(batch).sum()
        loss.backward()
        expected = reference(batch).sum()
        expected.backward()
        self.assertEqual(loss, expected)
        self.assertEqual(model.w1.weight.grad.full_tensor(), reference.w1.weight.grad)

    @with_comms
    def test_2d_mesh(self):
        mesh = init_device_mesh(self.device_type, (2, 2), mesh_dim_names=("dp", "tp"))
        full = torch.arange(16.0).reshape(4, 4)
        both = distribute_tensor(full, mesh, [Shard(0), Shard(1)])
        self.assertEqual(both.to_local().shape, torch.Size([2, 2]))
        self.assertEqual(both.redistribute(mesh, [Replicate(), Shard(0)]).full_tensor(), full)

    @with_comms
    def test_ops(self):
        mesh = self.build_device_mesh()
        full = torch.arange(32.0).reshape(4, 8) / 10
        sharded = distribute_tensor(full, mesh, [Shard(1)])
        self.assertEqual((sharded * 2 + 1).full_tensor(), full * 2 + 1)
        self.assertEqual(sharded.sum().full_tensor(), full.sum())
        self.assertEqual(torch.softmax(sharded, dim=0).full_tensor(), torch.softmax(full, dim=0))
'''

PLANNING = '''

class Planning(DTensorTestBase):
    """Planning-heavy bodies at 8 ranks: every placement pair of a 3-D mesh,
    and graph-based (min-cost) plans with even and uneven shapes."""

    @property
    def world_size(self):
        return 8

    @with_comms
    def test_every_placement_pair_3d(self):
        import itertools

        mesh = init_device_mesh(self.device_type, (2, 2, 2))
        full = torch.arange(64.0).reshape(8, 8)
        combos = list(itertools.product([Replicate(), Shard(0), Shard(1)], repeat=3))
        for src in combos:
            sharded = distribute_tensor(full, mesh, src)
            for dst in combos[::3]:
                self.assertEqual(sharded.redistribute(mesh, dst).full_tensor(), full)

    def _min_cost_plans(self, shape):
        import itertools
        from torch.distributed.tensor._redistribute import use_min_cost_redistribution_plan

        mesh = init_device_mesh(self.device_type, (2, 2, 2))
        full = torch.arange(shape[0] * shape[1] * 1.0).reshape(shape)
        combos = list(itertools.product([Replicate(), Shard(0), Shard(1)], repeat=3))
        with use_min_cost_redistribution_plan():
            for src in combos[::2]:
                sharded = distribute_tensor(full, mesh, src)
                for dst in combos[::5]:
                    self.assertEqual(sharded.redistribute(mesh, dst).full_tensor(), full)

    @with_comms
    def test_min_cost_plans_even(self):
        self._min_cost_plans((16, 8))

    @with_comms
    def test_min_cost_plans_uneven(self):
        self._min_cost_plans((12, 10))
'''

PLANNING_HARNESSES = {
    "LocalTensor (create_local_tensor_test_class)":
        "PlanningWithLocalTensor = create_local_tensor_test_class(Planning)\ndel Planning\n",
    "exact (create_exact_test_class)": "PlanningExact = create_exact_test_class(Planning)\ndel Planning\n",
}

HARNESSES = {
    "processes (MultiProcessTestCase, gloo)": "",
    "LocalTensor (create_local_tensor_test_class)":
        "RepresentativeWithLocalTensor = create_local_tensor_test_class(Representative)\ndel Representative\n",
    "exact (create_exact_test_class)": "RepresentativeExact = create_exact_test_class(Representative)\ndel Representative\n",
}
TESTS = CLASS.count("    def test_")


def run(module: str, tests: int, rounds: int, workdir: Path) -> list[float]:
    """Per-test times of ``rounds`` runs of ``module`` (one harness's class)."""
    bench_pytest.STYLES["unittest"] = lambda n, ws: module
    times: list[float] = []
    for _ in range(rounds):
        times.extend(bench_pytest.run_style("unittest", tests, 4, workdir))
    return times


def table(title: str, rows: list[tuple[str, float, float]]) -> str:
    exact = rows[-1]
    text = f"| {title} | median per test | class total | ratio to exact |\n|---|---:|---:|---:|\n"
    for harness, median_ms, total in rows:
        text += f"| {harness} | {median_ms:.1f} ms | {total:.2f} s | {total / exact[2]:.1f}x |\n"
    return text


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-mp", action="store_true", help="leave out processes (about 10 s a test)")
    args = parser.parse_args(argv)
    # Every test counts: run_style drops warm-up tests only past 10.
    workdir = Path(tempfile.mkdtemp(prefix="fakepg-bench-unittest-"))
    rows = []
    for harness, tail in HARNESSES.items():
        if args.skip_mp and harness.startswith("processes"):
            continue
        rounds = 1 if harness.startswith("processes") else args.rounds
        times = run(CLASS + "\n" + tail, TESTS, rounds, workdir)
        rows.append((harness, statistics.median(times) * 1e3, sum(times) / rounds))
    text = table(f"{TESTS} DTensorTestBase tests, world 4", rows) + "\n"
    rows = []
    tests = PLANNING.count("    def test_")
    for harness, tail in PLANNING_HARNESSES.items():
        times = run(CLASS + PLANNING + "\n" + tail + "del Representative\n",
                    tests, args.rounds, workdir)
        rows.append((harness, statistics.median(times) * 1e3, sum(times) / args.rounds))
    text += table(f"{tests} planning-heavy tests, world 8", rows)
    print(text, end="")
    return text


if __name__ == "__main__":
    main()
