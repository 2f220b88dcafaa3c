"""Hybrid worlds (``values="exact"`` with ``exact_dims``) and exact worlds on
fake tensors: pipeline schedules run their real code, stage by stage, with
the same ledger as a full exact world of real tensors; each stage measures
its own memory; a schedule that would hang is named, not hung."""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B

from pytest_fakepg import ExactWorld, FakeWorld, FakeWorldDeadlock, WorldSpec

from .conftest import RunTests

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

MESH = {"pp": 4, "dp": 2}
STAGES = (0, 2, 4, 6)  # the ranks at dp 0: one per stage


def test_exact_dims_run_the_ranks_that_share_the_other_coordinates() -> None:
    mesh = {"pp": 2, "dp": 2, "tp": 2}
    assert WorldSpec.build(mesh=mesh, values="exact", exact_dims="pp").running == (0, 4)
    assert WorldSpec.build(mesh=mesh, values="exact", exact_dims="pp", rank=3).running == (3, 7)
    assert WorldSpec.build(mesh=mesh, values="exact", exact_dims=("pp", "tp"), rank=2).running == (2, 3, 6, 7)
    assert WorldSpec.build(mesh=mesh, values="exact", exact_dims=("pp", "dp", "tp")).running is None  # every rank


def test_groups_of_running_ranks_are_exact_and_the_rest_uniform() -> None:
    """NOTE [Hybrid worlds]: ``pp`` reaches only running ranks, so it sums
    each stage's own value; ``dp`` and the default group reach ranks that do
    not run, so each running rank gets what a uniform world gives."""
    with ExactWorld(mesh=MESH, exact_dims="pp") as world:
        def program() -> tuple[float, float, float]:
            mine = torch.tensor([float(dist.get_rank())])
            pp, dp, everyone = mine.clone(), mine.clone(), mine.clone()
            dist.all_reduce(pp, group=world.mesh["pp"].get_group())
            dist.all_reduce(dp, group=world.mesh["dp"].get_group())
            dist.all_reduce(everyone)
            return pp.item(), dp.item(), everyone.item()

        results = world.run(program)
        assert world.running == list(STAGES)
    assert results == [(12.0, 2.0 * r, 8.0 * r) for r in STAGES]


def test_point_to_point_between_running_ranks_meets_on_any_group() -> None:
    """On the default group, which reaches ranks that do not run, a send
    from one running rank to another still delivers its values; a recv
    from a rank that does not run leaves its buffer as it was (uniform)."""
    with ExactWorld(mesh=MESH, exact_dims="pp") as world:
        def program() -> list[float]:
            rank = dist.get_rank()
            got = torch.full((2,), -1.0)
            if rank == 0:
                dist.send(torch.tensor([7.0, 8.0]), 2)
            elif rank == 2:
                dist.recv(got, 0)
            lonely = torch.full((1,), -1.0)
            dist.recv(lonely, rank + 1)  # rank + 1 does not run (dp 1)
            return [*got.tolist(), *lonely.tolist()]

        assert world.run(program) == [[-1.0, -1.0, -1.0], [7.0, 8.0, -1.0], [-1.0, -1.0, -1.0], [-1.0, -1.0, -1.0]]


def pipeline(
    world: FakeWorld, schedule: type, virtual: int = 1, microbatches: int = 4, width: int = 16, rows: int = 8
) -> Any:
    """One training step of a pipeline of Linear stages over ``pp``, as the
    running rank's program: its ledger (op, group, peer, shapes)."""
    pp = world.mesh["pp"]
    n = pp.size()
    stages = [
        PipelineStage(nn.Sequential(nn.Linear(width, width), nn.ReLU()), pp.get_local_rank() + v * n, n * virtual,
                      torch.device("cpu"), group=pp.get_group())
        for v in range(virtual)
    ]
    step = schedule(stages[0] if virtual == 1 else stages, n_microbatches=microbatches, loss_fn=lambda out, _: out.sum())
    target = torch.zeros(rows, width)
    if pp.get_local_rank() == 0:
        step.step(torch.randn(rows, width), target=target)
    else:
        step.step(target=target)
    return [(r.op, r.group, r.peer, r.shapes) for r in world.collectives]


def stage_ledgers(program: Callable[[FakeWorld], Any], **kwargs: Any) -> dict[int, Any]:
    with ExactWorld(mesh=MESH, **kwargs) as world:
        return dict(zip(world.running, world.run(lambda: program(world))))


@pytest.mark.parametrize(("schedule", "virtual"), [(ScheduleGPipe, 1), (Schedule1F1B, 1), (ScheduleInterleaved1F1B, 2)],
                         ids=["gpipe", "1f1b", "interleaved-1f1b"])
def test_pipeline_ledgers_per_stage_match_a_full_exact_world(schedule: type, virtual: int) -> None:
    def program(world: FakeWorld) -> Any:
        return pipeline(world, schedule, virtual)

    full = stage_ledgers(program)  # every rank, real tensors
    hybrid = stage_ledgers(program, exact_dims="pp", tensors="fake")
    assert hybrid == {rank: full[rank] for rank in STAGES}
    sends = [(peer, shapes) for op, group, peer, shapes in hybrid[2] if op == "send" and shapes == ((2, 16),)]
    # stage 1 sends each microbatch's activations to stage 2 (rank 4) and
    # each input gradient back to stage 0 (rank 0)
    assert sorted({peer for peer, _ in sends}) == [0, 4] and len(sends) == 2 * 4 * virtual


def test_each_stage_measures_its_own_memory() -> None:
    """The first stage of 1F1B keeps ``stages`` microbatches' activations in
    flight where GPipe keeps all of them: its own peak shows exactly those
    microbatches more, one 512 x 64 float32 activation each. Large
    microbatches, so activations dominate."""
    def peaks(schedule: type) -> dict[int, int]:
        # What the cycle collector frees, and when, depends on what ran before
        # in the process: measure with it off, so each stage's figure is its own.
        gc.collect()
        gc.disable()
        try:
            return measure(schedule)
        finally:
            gc.enable()

    def measure(schedule: type) -> dict[int, int]:
        with ExactWorld(mesh=MESH, exact_dims="pp", tensors="fake") as world:
            def program() -> int:
                world.memory.reset()
                pipeline(world, schedule, microbatches=8, width=64, rows=8 * 512)
                return world.memory.at_peak["activations"]

            measured = dict(zip(world.running, world.run(program)))
            assert {r: m.at_peak["activations"] for r, m in world.rank_memory().items()} == measured
            return measured

    one_f_one_b, gpipe = peaks(Schedule1F1B), peaks(ScheduleGPipe)
    assert gpipe[0] - one_f_one_b[0] == (8 - 4) * 512 * 64 * 4
    assert all(gpipe[r] >= one_f_one_b[r] for r in STAGES)
    assert len(set(one_f_one_b.values())) > 1  # each stage its own figure


def test_a_stage_running_other_microbatches_is_named_not_hung() -> None:
    def program(world: FakeWorld) -> Any:
        stage = world.mesh["pp"].get_local_rank()
        return pipeline(world, ScheduleGPipe, microbatches=2 if stage == 2 else 4)

    with pytest.raises(FakeWorldDeadlock) as info:
        stage_ledgers(program, exact_dims="pp", tensors="fake")
    report = str(info.value)
    assert "no rank can run" in report
    assert "rank 4 finished its program" in report or "rank 4 waits" in report
    assert "rank 6 waits in recv on group pp" in report


def test_exact_world_on_fake_tensors() -> None:
    """Objects are exchanged for real, tensors as shapes; every rank measures
    its own memory; a recv of another shape than its send fails naming both
    ranks and their lines."""
    with ExactWorld(2, tensors="fake") as world:
        def program() -> tuple[list[Any], int, type]:
            rank = dist.get_rank()
            objects = [{"rank": rank}]
            dist.broadcast_object_list(objects, src=1)
            weight = torch.empty(1000 * (rank + 1), 1000)  # this rank's own
            dist.all_reduce(weight[:1000])
            return objects, world.memory.current["other"] + world.memory.current["activations"], type(weight)

        results = world.run(program)
        assert [r[0] for r in results] == [[{"rank": 1}], [{"rank": 1}]]
        assert [r[1] for r in results] == [4_000_000, 8_000_000]
        assert {r[2] for r in results} == {torch._subclasses.fake_tensor.FakeTensor}

        def mismatch() -> None:
            if dist.get_rank() == 0:
                dist.send(torch.ones(4, 3), 1)
            else:
                dist.recv(torch.empty(3, 4), 0)

        with pytest.raises(dist.DistBackendError, match=r"rank 0 send float32\[4, 3\] to rank 1; rank 1 recv "
                           r"float32\[3, 4\] from rank 0 - on fake tensors a send and its recv must agree on shape "
                           r"\(dimensions of size 1 aside\).*"
                           r"\(rank 0 at test_hybrid.py:\d+; rank 1 at test_hybrid.py:\d+\)"):
            world.run(mismatch)


def test_the_marker_runs_each_stage_with_its_own_fixtures(run_tests: RunTests) -> None:
    result = run_tests("""
import torch, torch.distributed as dist

@pytest.mark.fake_world(mesh={"pp": 2, "dp": 4}, values="exact", exact_dims="pp", tensors="fake")
def test_stage(rank, device_mesh, memory, collectives):
    stage = device_mesh["pp"].get_local_rank()
    buffer = torch.empty(1000 * (stage + 1))  # this stage's own memory
    dist.all_reduce(torch.empty(10), group=device_mesh["pp"].get_group())
    assert rank == 4 * stage
    assert memory.current["other"] + memory.current["activations"] == 4000 * (stage + 1)
    assert collectives.ops == ["all_reduce"]
    print("STAGE", rank, stage)
""", "-s", "-v")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*test_stage?w8-pp2xdp4-exact-pp?*"])
    assert sorted(line[line.index("STAGE"):] for line in result.stdout.lines if "STAGE" in line) == ["STAGE 0 0", "STAGE 4 1"]


def test_the_report_shows_each_running_rank(run_tests: RunTests, tmp_path: Any) -> None:
    report = tmp_path / "report.json"
    result = run_tests("""
import torch, torch.distributed as dist

@pytest.mark.fake_world(mesh={"pp": 2, "dp": 4}, values="exact", exact_dims="pp", tensors="fake")
def test_stage(device_mesh, memory):
    stage = device_mesh["pp"].get_local_rank()
    memory.reset()
    held = torch.empty(1000 * (stage + 1))
    dist.all_reduce(torch.empty(10), group=device_mesh["pp"].get_group())
    dist.all_reduce(torch.empty(25), group=device_mesh["dp"].get_group())
""", "--fake-world-report", f"--fake-world-report-json={report}")
    result.assert_outcomes(passed=1)
    import json

    (entry,) = json.loads(report.read_text())["tests"].values()
    assert entry["running"] == [0, 4] and entry["exact_dims"] == ["pp"]
    assert {rank: per["sent"] for rank, per in entry["ranks"].items()} == {
        "0": {"pp": 40, "dp": 100}, "4": {"pp": 40, "dp": 100},
    }
    peaks = [entry["ranks"][r]["memory"]["peak"] for r in ("0", "4")]
    assert peaks[1] - peaks[0] == 4000 and peaks[0] >= 4000 + 100  # stage 1 holds 4,000 bytes more
    result.stdout.fnmatch_lines([
        "*test_stage* (world 8, ranks 0, 4, exact along pp, fake tensors)",
        "    rank 0: memory peak 4.* KiB, pp 40 B, dp 100 B",
        "    rank 4: memory peak 7.9 KiB, pp 40 B, dp 100 B",
    ])
