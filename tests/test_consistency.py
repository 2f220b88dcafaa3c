"""Consistency across ranks: a rank sweep fails when its ranks issue
different collectives, naming the group, the call, both ranks' calls and
their lines; consistent programs pass untouched; Flight Recorder dumps."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import RunTests

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# Each test file is the runner's one-line header, then the source below,
# which starts with a blank line: its decorator is on line 3.


def diverge(result: pytest.RunResult, message: str) -> None:
    """One case failed, and its report says `message` (a trailing "*":
    starts with it)."""
    result.assert_outcomes(failed=1, passed=result.parseoutcomes()["passed"])
    # Less the closing "[...]" that says which case carries the failure.
    lines = [line.rsplit(" [", 1)[0] if line.endswith("]") else line
             for line in result.stdout.lines if line.startswith("fake world ranks diverge: ")]
    expected = f"fake world ranks diverge: {message}"
    if expected.endswith("*"):
        assert [line[: len(expected) - 1] for line in lines] == [expected[:-1]], lines
    else:
        assert lines == [expected]


def test_a_call_one_rank_skips(run_tests: RunTests) -> None:
    result = run_tests("""
@pytest.mark.fake_world(4, rank="all")
def test_skip(rank):
    t = torch.ones(4)
    if rank != 2:
        dist.all_reduce(t)
    dist.barrier()
""")
    diverge(result, "ranks 0 and 2 diverge on group default_pg (ranks 0-3) at its call 1: rank 0 all_reduce "
                    "float32[4] SUM at test_it.py:7; rank 2 barrier at test_it.py:8 - on a cluster rank 0 "
                    "waits forever in all_reduce, rank 2 in barrier")
    result.assert_outcomes(failed=1, passed=3)


def test_a_shape_one_element_longer(run_tests: RunTests) -> None:
    result = run_tests("""
@pytest.mark.fake_world(4, rank="all")
def test_shape(rank):
    dist.all_reduce(torch.ones(4 + (rank == 3)))
""")
    diverge(result, "ranks 0 and 3 diverge on group default_pg (ranks 0-3) at its call 1: rank 0 all_reduce "
                    "float32[4] SUM at test_it.py:5; rank 3 all_reduce float32[5] SUM at test_it.py:5 - on a "
                    "cluster this is a size mismatch*")


def test_tb_line_shows_a_divergence_once_at_the_test(run_tests: RunTests) -> None:
    """--tb=line printed the divergence twice, the second copy cut at 50
    characters (#23, point 6): now once, as pytest shows any failure's line."""
    result = run_tests("""
@pytest.mark.fake_world(4, rank="all")
def test_shape(rank):
    dist.all_reduce(torch.ones(4 + (rank == 3)))
""", "--tb=line")
    result.assert_outcomes(failed=1, passed=3)
    shown = [line for line in result.stdout.lines if "diverge on group" in line and "FAILED" not in line]
    assert len(shown) == 1, shown
    assert shown[0].startswith("test_it.py:3: ranks 0 and 3 diverge on group default_pg")  # the cause first
    result.stdout.fnmatch_lines(["FAILED test_it.py::test_shape[[]w4-r3[]] - ranks 0 and 3 diverge on group*"])
    assert shown[0].endswith("size mismatch: gloo raises, NCCL hangs or corrupts data [reported on rank 3's case: its "
                             "collectives differ from every other rank's]")


def test_a_dtype_that_differs(run_tests: RunTests) -> None:
    result = run_tests("""
@pytest.mark.fake_world(2, rank="all")
def test_dtype(rank):
    dist.broadcast(torch.ones(3, dtype=torch.float64 if rank else torch.float32), src=0)
""")
    diverge(result, "ranks 0 and 1 diverge on group default_pg (ranks 0, 1) at its call 1: rank 0 broadcast "
                    "float32[3] from rank 0 at test_it.py:5; rank 1 broadcast float64[3] from rank 0 at "
                    "test_it.py:5 - on a cluster this is a dtype mismatch*")


def test_last_failed_reruns_the_whole_sweep_the_check_needs(run_tests: RunTests) -> None:
    """--lf after a divergence reruns every case of the sweep: the one case
    that carried the failure would pass alone, and the run would look fixed."""
    source = """
@pytest.mark.fake_world(4, rank="all")
def test_shape(rank):
    dist.all_reduce(torch.ones(5 if rank == 3 else 4))

@pytest.mark.fake_world(2, rank="all")
def test_fine(rank):
    dist.barrier()
"""
    run_tests(source).assert_outcomes(failed=1, passed=5)
    rerun = run_tests(source, "--lf")
    rerun.assert_outcomes(failed=1, passed=3)  # the sweep of 4, not test_fine
    assert any(line.startswith("fake world ranks diverge: ") for line in rerun.stdout.lines)


def test_a_root_or_reduce_op_that_differs(run_tests: RunTests) -> None:
    result = run_tests("""
@pytest.mark.fake_world(2, rank="all")
def test_root(rank):
    dist.broadcast(torch.ones(3), src=rank)

@pytest.mark.fake_world(2, rank="all")
def test_op(rank):
    dist.all_reduce(torch.ones(3), op=dist.ReduceOp.MAX if rank else dist.ReduceOp.SUM)
""")
    result.assert_outcomes(failed=2, passed=2)
    result.stdout.fnmatch_lines([
        "*at its call 1: rank 0 broadcast float32[[]3[]] from rank 0 at test_it.py:5; rank 1 broadcast "
        "float32[[]3[]] from rank 1 at test_it.py:5 - on a cluster the ranks wait for different roots: a hang*",
        "*at its call 1: rank 0 all_reduce float32[[]3[]] SUM at test_it.py:9; rank 1 all_reduce "
        "float32[[]3[]] MAX at test_it.py:9 - on a cluster the ranks reduce with different ops*",
    ])


def test_an_extra_call_in_a_mesh_sub_group(run_tests: RunTests) -> None:
    result = run_tests("""
@pytest.mark.fake_world(mesh={"dp": 2, "tp": 2}, rank="all")
def test_extra(device_mesh, rank):
    tp = device_mesh.get_group("tp")
    dist.all_reduce(torch.ones(2), group=tp)
    if rank == 3:
        dist.all_reduce(torch.ones(2), group=tp)
    dist.barrier()
""")
    diverge(result, "ranks 2 and 3 diverge on group tp (ranks 2, 3) at its call 2: rank 2 issued no call 2 "
                    "on this group; rank 3 all_reduce float32[2] SUM at test_it.py:8 - on a cluster rank 3 "
                    "waits forever")


def test_point_to_point_sizes_and_unmatched_sends(run_tests: RunTests) -> None:
    result = run_tests("""
@pytest.mark.fake_world(4, rank="all")
def test_ring(rank, world_size):
    send = torch.full((3 + (rank == 2),), float(rank))
    recv = torch.empty(3)
    ops = [dist.P2POp(dist.isend, send, (rank + 1) % world_size),
           dist.P2POp(dist.irecv, recv, (rank - 1) % world_size)]
    for work in dist.batch_isend_irecv(ops):
        work.wait()

@pytest.mark.fake_world(2, rank="all")
def test_no_recv(rank):
    if rank == 0:
        dist.send(torch.ones(2), 1)
""")
    result.assert_outcomes(failed=2, passed=4)
    result.stdout.fnmatch_lines([
        "fake world ranks diverge: ranks 2 and 3 diverge on point-to-point 2 -> 3: rank 2 send float32[[]4[]] "
        "to rank 3 at test_it.py:9; rank 3 recv float32[[]3[]] from rank 2 at test_it.py:9 - on a cluster "
        "this is a size mismatch*",
        "fake world ranks diverge: ranks 0 and 1 diverge on point-to-point 0 -> 1: rank 0 send float32[[]2[]] "
        "to rank 1 at test_it.py:15; rank 1 posted no matching recv - on a cluster rank 0 waits forever*",
    ])


def test_a_partial_sweep_compares_the_ranks_it_ran(run_tests: RunTests) -> None:
    result = run_tests("""
@pytest.mark.fake_world(8, rank=[0, 5])
def test_partial(rank):
    if rank != 5:
        dist.barrier()
    dist.all_reduce(torch.ones(1))
""", "-v")
    diverge(result, "ranks 0 and 5 diverge on group default_pg (ranks 0-7) at its call 1: rank 0 barrier at "
                    "test_it.py:6; rank 5 all_reduce float32[1] SUM at test_it.py:7 - on a cluster rank 0 "
                    "waits forever in barrier, rank 5 in all_reduce")
    result.stdout.fnmatch_lines(["*test_partial[[]w8-r0[]] PASSED*", "*test_partial[[]w8-r5[]] FAILED*"])


def test_the_check_runs_across_xdist_workers(run_tests: RunTests) -> None:
    pytest.importorskip("xdist")
    result = run_tests("""
@pytest.mark.fake_world(4, rank="all")
def test_skip(rank):
    if rank != 1:
        dist.all_reduce(torch.ones(4))
    dist.barrier()
""", "-n", "2")
    result.assert_outcomes(failed=1, passed=3)
    result.stdout.fnmatch_lines(["fake world ranks diverge: ranks 0 and 1 diverge on group default_pg (ranks 0-3) "
                                 "at its call 1: rank 0 all_reduce float32[[]4[]] SUM at test_it.py:6; rank 1 "
                                 "barrier at test_it.py:7 - on a cluster*"])


def test_check_ranks_false_and_the_ini_switch_turn_it_off(pytester: pytest.Pytester, run_tests: RunTests) -> None:
    source = """
@pytest.mark.fake_world(2, rank="all")
def test_on(rank):
    if rank:
        dist.barrier()

@pytest.mark.fake_world(2, rank="all", check_ranks=False)
def test_off(rank):
    if rank:
        dist.barrier()
"""
    run_tests(source).assert_outcomes(failed=1, passed=3)
    pytester.makeini("[pytest]\nfake_world_check_ranks = false\n")
    run_tests(source).assert_outcomes(passed=4)


def test_consistent_programs_pass_untouched(run_tests: RunTests) -> None:
    result = run_tests("""
import torch.nn as nn
from torch.distributed.tensor import Replicate, Shard, distribute_tensor
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module
from torch.distributed.fsdp import fully_shard

class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net1, self.net2 = nn.Linear(16, 32), nn.Linear(32, 16)
    def forward(self, x):
        return self.net2(torch.relu(self.net1(x)))

@pytest.mark.fake_world(mesh={"dp": 2, "tp": 2}, rank="all")
def test_tp_plan_on_a_2d_mesh(device_mesh):
    model = parallelize_module(MLP(), device_mesh["tp"], {"net1": ColwiseParallel(), "net2": RowwiseParallel()})
    model(torch.randn(4, 16)).sum().backward()

@pytest.mark.fake_world([2, 3, 4], rank="all")
def test_fsdp2(world_size):
    model = MLP()
    for layer in (model.net1, model.net2):
        fully_shard(layer)
    fully_shard(model)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(2):
        model(torch.randn(4, 16)).sum().backward()
        opt.step()
        opt.zero_grad()

@pytest.mark.fake_world(mesh={"dp": 2, "tp": 2}, rank="all")
def test_distribute_tensor(device_mesh):
    dt = distribute_tensor(torch.arange(16.0).view(4, 4), device_mesh, [Shard(0), Shard(1)])
    dt.redistribute(device_mesh, [Replicate(), Replicate()]).full_tensor()

@pytest.mark.fake_world(4, rank="all")
def test_object_collectives(rank):
    out = [None] * 4
    dist.all_gather_object(out, {"rank": "r" * rank})  # sizes differ per rank
    box = [{"config": list(range(10))}] if rank == 0 else [None]
    dist.broadcast_object_list(box, src=0)
    mine = [None]
    dist.scatter_object_list(mine, ["a", "bb", "ccc", "dddd"], src=0)
    gathered = [None] * 4 if rank == 0 else None
    dist.gather_object("x" * rank, gathered, dst=0)

@pytest.mark.fake_world(4, rank="all")
def test_batch_isend_irecv_ring(rank, world_size):
    send, recv = torch.full((3,), float(rank)), torch.empty(3)
    ops = [dist.P2POp(dist.isend, send, (rank + 1) % world_size),
           dist.P2POp(dist.irecv, recv, (rank - 1) % world_size)]
    for work in dist.batch_isend_irecv(ops):
        work.wait()
""", "-W", "ignore::UserWarning")
    result.assert_outcomes(passed=4 + 2 + 3 + 4 + 4 + 4 + 4)


def test_the_examples_pass_every_rank(pytester: pytest.Pytester) -> None:
    examples = Path(__file__).resolve().parent.parent / "examples"
    # Images that carry pytest-benchmark (the GPU machine's) warn, fatally
    # under filterwarnings=error, when it runs inside an xdist worker.
    result = pytester.runpytest_subprocess(str(examples), "-p", "no:randomly", "-p", "no:benchmark",
                                           "--fake-world-ranks=all", "--rootdir", str(examples))
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 0 and outcomes.get("errors", 0) == 0, result.stdout.str()[-3000:]
    assert outcomes["passed"] >= 40


def analyze(folder: Path) -> str:
    """torch's own Flight Recorder analyzer, run on a folder of dumps."""
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.flight_recorder.fr_trace", str(folder)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout + result.stderr  # it reports through a logger too


def test_flight_recorder_dumps_read_by_torchs_analyzer(pytester: pytest.Pytester, run_tests: RunTests) -> None:
    result = run_tests("""
@pytest.mark.fake_world(mesh={"dp": 2, "tp": 2}, rank="all")
def test_consistent(device_mesh):
    dist.all_reduce(torch.ones(4), group=device_mesh.get_group("tp"))
    dist.all_gather_into_tensor(torch.empty(8), torch.ones(2))
    dist.barrier()

@pytest.mark.fake_world(4, rank="all")
def test_divergent(rank):
    dist.all_reduce(torch.ones(4 + (rank == 1)))
""", "--fake-world-trace-dir=traces")
    result.assert_outcomes(failed=1, passed=7)
    traces = pytester.path / "traces"
    assert sorted(p.name for p in traces.iterdir()) == [
        "test_it.py_test_consistent[w4-dp2xtp2]", "test_it.py_test_divergent[w4]",
    ]
    assert sorted(p.name for p in (traces / "test_it.py_test_divergent[w4]").iterdir()) == [
        f"rank_{r}" for r in range(4)
    ]
    clean = analyze(traces / "test_it.py_test_consistent[w4-dp2xtp2]")
    assert "error" not in clean.lower() and "missing" not in clean.lower() and "mismatch" not in clean.lower(), clean
    report = analyze(traces / "test_it.py_test_divergent[w4]")
    assert "Culprit rank 1" in report
    assert "Expected input sizes: '[[4]]' does not match found input sizes: '[[5]]'" in report
    assert "at test_it.py:11" in report


def test_flight_recorder_dumps_of_p2p_and_object_collectives(pytester: pytest.Pytester, run_tests: RunTests) -> None:
    """#23, point 11: correct programs with point-to-point calls, object
    collectives and DTensor read clean in torch's analyzer (a send/recv pair
    used to crash it: its sequence number was taken for the next collective's,
    grouping the two; an object collective's empty sizes did too), and a
    batch is written as NCCL's recorder writes it: one coalesced group."""
    import pickle

    result = run_tests("""
from torch.distributed.tensor import Shard, distribute_tensor

@pytest.mark.fake_world(2, rank="all")
def test_pairs(rank):
    t = torch.zeros(2)
    if rank == 0:
        dist.send(t, 1)
    else:
        dist.recv(t, 0)
    op = dist.P2POp(dist.isend, t, 1) if rank == 0 else dist.P2POp(dist.irecv, t, 0)
    for work in dist.batch_isend_irecv([op]):
        work.wait()
    dist.all_reduce(t)

@pytest.mark.fake_world(4, rank="all")
def test_objects(rank, device_mesh):
    out = [None] * 4
    dist.all_gather_object(out, {"rank": rank, "pad": "x" * rank})
    dist.broadcast_object_list([rank], src=0)
    distribute_tensor(torch.arange(8.0), device_mesh, [Shard(0)]).full_tensor()

@pytest.mark.fake_world(3, rank="all")
def test_ring(rank):
    ops = [dist.P2POp(dist.isend, torch.ones(2), (rank + 1) % 3), dist.P2POp(dist.irecv, torch.zeros(2), (rank - 1) % 3)]
    for work in dist.batch_isend_irecv(ops):
        work.wait()
""", "--fake-world-trace-dir=traces")
    result.assert_outcomes(passed=9)
    traces = pytester.path / "traces"
    for name in ("test_it.py_test_pairs[w2]", "test_it.py_test_objects[w4]"):
        clean = analyze(traces / name)
        assert not any(word in clean.lower() for word in ("error", "missing", "mismatch")), clean
    with open(traces / "test_it.py_test_ring[w3]" / "rank_0", "rb") as fh:
        entries = pickle.load(fh)["entries"]
    assert [(e["profiling_name"], e["p2p_seq_id"], e["is_p2p"]) for e in entries] == [
        ("nccl:send 0->1", 1, True), ("nccl:recv 0<-2", 1, True), ("nccl:coalesced", 1, True),
    ]


DEVIATES = """
@pytest.mark.fake_world(4, rank="all")
def test_div(rank):
    dist.all_reduce(torch.ones(2 if rank != 1 else 3))
"""


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_deviating_ranks_case_fails_in_every_order(run_tests: RunTests, seed: int) -> None:
    """#23, point 4: the failure is on the case of the one rank whose calls
    differ from the others', whatever order the cases run in."""
    pytest.importorskip("pytest_randomly")
    result = run_tests(DEVIATES, "-p", "randomly", f"--randomly-seed={seed}")
    result.assert_outcomes(failed=1, passed=3)
    result.stdout.fnmatch_lines([
        "*[[]reported on rank 1's case: its collectives differ from every other rank's[]]",
        "FAILED test_it.py::test_div[[]w4-r1[]]*",
    ])


def test_under_xdist_the_message_names_the_deviating_case(run_tests: RunTests) -> None:
    pytest.importorskip("xdist")
    result = run_tests(DEVIATES, "-n", "2")
    result.assert_outcomes(failed=1, passed=3)
    text = result.stdout.str()
    if "FAILED test_it.py::test_div[w4-r1]" not in text:  # completed elsewhere: named in the message
        assert "rank 1's case (test_it.py::test_div[w4-r1]) differs from every other rank's" in text
