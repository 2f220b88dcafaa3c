"""values="exact": every rank runs, and collectives compute exactly."""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Callable

import pytest
import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
import torch.nn as nn

from pytest_fakepg import FakeWorld
from pytest_fakepg import FakeWorldDeadlock

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # torch 2.13 renames
exact = pytest.mark.fake_world(4, values="exact")
# The parity tests also run on a GPU, where there is one (.ci/gpu).
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device; none is available"))]


# -- collectives ------------------------------------------------------------------


@exact
def test_all_reduce_adds_every_ranks_value(rank: int) -> None:
    t = torch.tensor([float(rank), 1.0])
    dist.all_reduce(t)
    assert t.tolist() == [6.0, 4.0]


@pytest.mark.parametrize(
    ("op", "expected"),
    [
        (dist.ReduceOp.SUM, 10.0),
        (dist.ReduceOp.AVG, 2.5),
        (dist.ReduceOp.PRODUCT, 24.0),
        (dist.ReduceOp.MIN, 1.0),
        (dist.ReduceOp.MAX, 4.0),
    ],
)
@exact
def test_reduce_ops(rank: int, op: dist.ReduceOp, expected: float) -> None:
    t = torch.tensor([rank + 1.0])
    dist.all_reduce(t, op=op)
    assert t.item() == expected


@exact
def test_bitwise_and_premul_sum(rank: int) -> None:
    t = torch.tensor([1 << rank, 3])
    dist.all_reduce(t, op=dist.ReduceOp.BOR)
    assert t.tolist() == [15, 3]
    t = torch.tensor([rank + 1.0])
    dist.all_reduce(t, op=dist._make_nccl_premul_sum(0.5))
    assert t.item() == 5.0


@exact
def test_rooted_collectives(rank: int) -> None:
    t = torch.tensor([float(rank)])
    dist.broadcast(t, src=2)
    assert t.item() == 2.0
    t = torch.tensor([float(rank)])
    dist.reduce(t, dst=1)
    assert t.item() == (6.0 if rank == 1 else float(rank))
    gathered = [torch.zeros(1) for _ in range(4)] if rank == 3 else None
    dist.gather(torch.tensor([rank * 10.0]), gathered, dst=3)
    if rank == 3:
        assert [g.item() for g in gathered] == [0.0, 10.0, 20.0, 30.0]
    out = torch.zeros(1)
    dist.scatter(out, [torch.tensor([i + 100.0]) for i in range(4)] if rank == 0 else None, src=0)
    assert out.item() == 100.0 + rank


@pytest.mark.skipif(not hasattr(dist, "gather_single"), reason="this torch has no dist.gather_single (2.14.1 and 2.15 have it)")
@exact
def test_gather_into_tensor(rank: int) -> None:
    out = torch.full((8,), -1.0) if rank == 2 else None
    dist.gather_single(torch.tensor([rank, -rank], dtype=torch.float), out, dst=2)
    if rank == 2:
        assert out.tolist() == [0, 0, 1, -1, 2, -2, 3, -3]


@pytest.mark.parametrize("device", DEVICES)
@exact
def test_gathers_and_scatters(rank: int, device: str) -> None:
    torch.set_default_device(device)  # this rank's thread only
    out = [torch.zeros(2) for _ in range(4)]
    dist.all_gather(out, torch.full((2,), float(rank)))
    assert [o[0].item() for o in out] == [0.0, 1.0, 2.0, 3.0]
    flat = torch.zeros(8)
    dist.all_gather_into_tensor(flat, torch.tensor([rank, -rank], dtype=torch.float))
    assert flat.tolist() == [0, 0, 1, -1, 2, -2, 3, -3]
    inp = torch.arange(8, dtype=torch.float) + 100 * rank
    piece = torch.zeros(2)
    dist.reduce_scatter_tensor(piece, inp)
    # element i of the sum over ranks r of arange(8) + 100 r is 4 i + 600
    assert piece.tolist() == [4 * (2 * rank) + 600, 4 * (2 * rank + 1) + 600]
    lists = [torch.full((1,), float(rank * 4 + j)) for j in range(4)]
    mine = torch.zeros(1)
    dist.reduce_scatter(mine, lists)
    assert mine.item() == sum(r * 4 + rank for r in range(4))


@exact
def test_all_to_all_single_with_uneven_splits(rank: int) -> None:
    # Rank r sends j+1 rows of value 10r+j to rank j.
    in_splits = [j + 1 for j in range(4)]
    inp = torch.cat([torch.full((j + 1,), float(10 * rank + j)) for j in range(4)])
    out_splits = [rank + 1] * 4
    out = torch.zeros(sum(out_splits))
    dist.all_to_all_single(out, inp, out_splits, in_splits)
    assert out.tolist() == [float(10 * r + rank) for r in range(4) for _ in range(rank + 1)]
    outs = [torch.zeros(1) for _ in range(4)]
    dist.all_to_all(outs, [torch.tensor([float(10 * rank + j)]) for j in range(4)])
    assert [o.item() for o in outs] == [float(10 * r + rank) for r in range(4)]


@pytest.mark.fake_world(values="exact", mesh={"dp": 2, "tp": 2})
def test_mesh_sub_groups_reduce_their_own_members(rank: int, device_mesh) -> None:
    t = torch.tensor([float(rank)])
    dist.all_reduce(t, group=device_mesh["tp"].get_group())
    assert t.item() == (1.0 if rank < 2 else 5.0)  # tp groups: {0, 1}, {2, 3}
    t = torch.tensor([float(rank)])
    dist.all_reduce(t, group=device_mesh["dp"].get_group())
    assert t.item() == (2.0 if rank % 2 == 0 else 4.0)  # dp groups: {0, 2}, {1, 3}


@exact
def test_new_group_of_some_ranks(rank: int) -> None:
    odd = dist.new_group([1, 3])
    if rank % 2:
        t = torch.tensor([float(rank)])
        dist.all_reduce(t, group=odd)
        assert t.item() == 4.0


@exact
def test_functional_collectives(rank: int) -> None:
    t = funcol.all_reduce(torch.tensor([float(rank)]), "sum", dist.group.WORLD)
    assert t.item() == 6.0
    g = funcol.all_gather_tensor(torch.tensor([float(rank)]), 0, dist.group.WORLD)
    assert g.tolist() == [0.0, 1.0, 2.0, 3.0]


@exact
def test_async_work_completes_when_every_rank_has_issued(rank: int) -> None:
    t = torch.tensor([float(rank)])
    work = dist.all_reduce(t, async_op=True)
    work.wait()
    assert work.is_completed() and t.item() == 6.0
    fut = dist.all_reduce(torch.ones(1), async_op=True).get_future()
    assert fut.value()[0].item() == 4.0


# -- rank-dependent programs ---------------------------------------------------------


@exact
def test_rank_dependent_branches(rank: int) -> None:
    assert dist.get_rank() == rank
    t = torch.tensor([1.0])
    if rank == 0:
        dist.broadcast(torch.tensor([42.0]), src=0)
    else:
        dist.broadcast(t, src=0)
        assert t.item() == 42.0


@exact
def test_send_recv(rank: int) -> None:
    if rank == 0:
        for dst in (1, 2, 3):
            dist.send(torch.tensor([dst * 1.5]), dst=dst)
    else:
        buf = torch.zeros(1)
        dist.recv(buf, src=0)
        assert buf.item() == rank * 1.5


@exact
def test_recv_from_any_source_names_the_sender(rank: int) -> None:
    if rank == 0:
        got = sorted(dist.recv(torch.zeros(1)) for _ in range(3))
        assert got == [1, 2, 3]
    else:
        dist.send(torch.tensor([float(rank)]), dst=0)


@exact
def test_batch_isend_irecv_ring(rank: int) -> None:
    send = torch.tensor([float(rank)])
    recv = torch.zeros(1)
    ops = [dist.P2POp(dist.isend, send, (rank + 1) % 4), dist.P2POp(dist.irecv, recv, (rank - 1) % 4)]
    for work in dist.batch_isend_irecv(ops):
        work.wait()
    assert recv.item() == (rank - 1) % 4


@exact
def test_object_collectives(rank: int) -> None:
    objs = [None] * 4
    dist.all_gather_object(objs, {"rank": rank, "pad": "x" * rank})
    assert objs == [{"rank": r, "pad": "x" * r} for r in range(4)]
    box = [f"from {rank}"]
    dist.broadcast_object_list(box, src=3)
    assert box == ["from 3"]


# -- RNG ---------------------------------------------------------------------------


def test_each_rank_gets_the_stream_a_separate_process_would() -> None:
    torch.manual_seed(7)
    expected = [torch.rand(3) for _ in range(2)]  # what seed 7 gives, twice over

    def program() -> tuple[torch.Tensor, torch.Tensor, float]:
        rank = dist.get_rank()
        torch.manual_seed(7 if rank == 1 else rank)
        first = torch.rand(3)
        dist.barrier()  # every other rank draws meanwhile
        random.seed(rank)
        return first, torch.rand(3), random.random()

    with FakeWorld(3, values="exact") as world:
        results = world.run(program)
    assert torch.equal(results[1][0], expected[0]) and torch.equal(results[1][1], expected[1])
    random.seed(2)
    assert results[2][2] == random.random()
    assert not torch.equal(results[0][0], results[2][0])


def test_ranks_start_on_the_callers_torch_stream_which_goes_on_untouched() -> None:
    # The scheduler swaps the CPU generator itself: its engine, and the normal
    # sample randn caches (a rank's second randn(1) uses the first's spare).
    def draws(seed: int | None = None) -> list[torch.Tensor]:
        if seed is not None:
            torch.manual_seed(seed)
        return [torch.rand(2), torch.randn(1), torch.randn(1)]

    torch.manual_seed(11)
    torch.rand(3)
    state = torch.get_rng_state()
    callers_next = draws()
    per_seed = {rank: draws(100 + rank) for rank in range(3)}
    torch.set_rng_state(state)

    def program() -> list[torch.Tensor]:
        rank = dist.get_rank()
        inherited = torch.rand(2)
        torch.manual_seed(100 + rank)
        first = [torch.rand(2), torch.randn(1)]
        dist.barrier()  # every other rank draws meanwhile
        return [inherited, *first, torch.randn(1)]

    with FakeWorld(3, values="exact") as world:
        results = world.run(program)
    for rank, (inherited, *seeded) in enumerate(results):
        assert torch.equal(inherited, callers_next[0])
        assert all(torch.equal(a, b) for a, b in zip(seeded, per_seed[rank]))
    assert all(torch.equal(a, b) for a, b in zip(draws(), callers_next))


def test_each_rank_draws_from_a_copy_of_the_callers_python_random() -> None:
    random.seed(11)
    expected = [random.random(), random.random()]
    random.seed(11)

    def program() -> list[float]:
        if dist.get_rank() == 1:
            dist.barrier()
            return []  # never draws: rank 2 still starts where the caller was
        first = random.random()
        dist.barrier()  # the other ranks draw meanwhile
        return [first, random.random()]

    with FakeWorld(3, values="exact") as world:
        results = world.run(program)
    assert results == [expected, [], expected]
    assert random.random() == expected[0]  # the caller's own stream did not move


def test_a_run_leaves_no_garbage_for_the_cycle_collector() -> None:
    """Garbage in reference cycles lives until a collection finds it; each
    run's would make the collector's full passes (over all of torch's objects)
    come sooner. In a fresh process: what earlier tests' worlds left behind
    may be let go during a run, and is not the run's."""
    import subprocess
    import sys

    program = """
import gc, random, torch, torch.distributed as dist
from pytest_fakepg import FakeWorld

def program():
    t = torch.tensor([random.random()])
    dist.all_reduce(t)
    return t.item()

with FakeWorld(3, values="exact") as world:
    world.run(program)  # warm: what is made once per process
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    world.run(program)
    gc.collect()
    print(sorted({type(o).__qualname__ for o in gc.garbage}))
    gc.set_debug(0)
"""
    run = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.filterwarnings("ignore:DTensor random operators:UserWarning")
@exact
def test_dtensor_random_ops_match_one_process(rank: int) -> None:
    from torch.distributed.tensor import Replicate, distribute_tensor

    mesh = dist.device_mesh.init_device_mesh("cpu", (4,))
    torch.manual_seed(0)
    d = distribute_tensor(torch.zeros(8), mesh, [Replicate()])
    d.uniform_()
    full = d.full_tensor()
    gathered = [torch.zeros(8) for _ in range(4)]
    dist.all_gather(gathered, full)
    assert all(torch.equal(g, gathered[0]) for g in gathered)  # replicas agree


# -- DTensor and parity --------------------------------------------------------------


@exact
def test_dtensor_distribute_redistribute_full_tensor(rank: int) -> None:
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    mesh = dist.device_mesh.init_device_mesh("cpu", (4,))
    full = torch.arange(16, dtype=torch.float).reshape(4, 4)
    d = distribute_tensor(full, mesh, [Shard(0)])
    assert d.to_local().tolist() == [full[rank].tolist()]
    assert torch.equal(d.full_tensor(), full)
    r = (d * (rank + 1)).redistribute(mesh, [Replicate()])  # a local op that differs per rank
    assert torch.equal(r.to_local(), full * torch.arange(1, 5, dtype=torch.float).reshape(4, 1))
    assert torch.equal(d.sum().full_tensor(), full.sum())


def test_sharding_decisions_that_depend_on_the_rank_are_the_ranks_own() -> None:
    # 10 rows over 4 ranks: 3, 3, 3 and 1 rows. A view's sharding decision
    # holds the local shape, computed from the rank's coordinate; the second
    # world reuses the first's decisions (NOTE [compat: sharding decisions
    # across worlds]), every rank its own.
    from torch.distributed.tensor import Shard, distribute_tensor

    full = torch.arange(40.0).view(10, 4)

    def program() -> tuple[tuple[int, ...], torch.Tensor]:
        mesh = dist.device_mesh.init_device_mesh("cpu", (4,))
        viewed = distribute_tensor(full, mesh, [Shard(0)]).view(10, 2, 2)
        return tuple(viewed.to_local().shape), viewed.full_tensor()

    for _ in range(2):
        with FakeWorld(4, values="exact") as world:
            results = world.run(program)
        assert [shape for shape, _ in results] == [(3, 2, 2), (3, 2, 2), (3, 2, 2), (1, 2, 2)]
        for _, whole in results:
            assert torch.equal(whole, full.view(10, 2, 2))


def test_each_rank_redistributes_with_its_own_shapes() -> None:
    # Dimension 0 sharded on both mesh dimensions, unevenly: rows 0-3 for
    # ranks 0 and 1, rows 4-6 for ranks 2 and 3. torch's redistribute caches
    # are per process and hold the shapes of the rank that filled them; each
    # rank needs its own (NOTE [compat: redistribute caches]).
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    full = torch.arange(14.0).view(7, 2)

    def program() -> tuple[int, bool]:
        mesh = dist.device_mesh.init_device_mesh("cpu", (2, 2))
        moved = distribute_tensor(full, mesh, [Shard(0), Shard(0)]).redistribute(mesh, [Shard(0), Replicate()])
        return moved.to_local().shape[0], torch.equal(moved.full_tensor(), full)

    with FakeWorld(4, values="exact") as world:
        assert world.run(program) == [(4, True), (4, True), (3, True), (3, True)]


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Linear(8, 16)
        self.w2 = nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(torch.relu(self.w1(x)))


def _reference(steps: int, batch: torch.Tensor) -> tuple[MLP, list[float]]:
    torch.manual_seed(0)
    model = MLP().to(batch.device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for _ in range(steps):
        loss = model(batch).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return model, losses


@pytest.mark.parametrize("device", DEVICES)
@exact
def test_tensor_parallel_matches_one_device(rank: int, device: str) -> None:
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    batch = torch.randn(4, 8, generator=torch.Generator().manual_seed(1)).to(device)
    reference, losses = _reference(3, batch)
    torch.manual_seed(0)
    model = MLP().to(device)
    mesh = dist.device_mesh.init_device_mesh(device, (4,))
    parallelize_module(model, mesh, {"w1": ColwiseParallel(), "w2": RowwiseParallel()})
    assert model.w1.weight.to_local().shape == (4, 8)  # each rank holds a quarter
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(3):
        loss = model(batch).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        assert loss.item() == pytest.approx(losses[step], rel=1e-5)
    for name, p in reference.named_parameters():
        torch.testing.assert_close(model.get_parameter(name).full_tensor(), p.detach())


@pytest.mark.parametrize("device", DEVICES)
@exact
def test_fsdp2_matches_one_device(rank: int, device: str) -> None:
    from torch.distributed.fsdp import fully_shard

    batch = torch.randn(8, 8, generator=torch.Generator().manual_seed(1)).to(device)
    reference, losses = _reference(3, batch)
    torch.manual_seed(0)
    model = MLP().to(device)
    mesh = dist.device_mesh.init_device_mesh(device, (4,))
    fully_shard(model.w1, mesh=mesh)
    fully_shard(model, mesh=mesh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mine = batch[rank * 2 : rank * 2 + 2]  # each rank its own quarter of the batch
    for step in range(3):
        loss = model(mine).pow(2).mean()
        loss.backward()  # FSDP2 averages gradients over the ranks
        opt.step()
        opt.zero_grad()
        total = loss.detach().clone()
        dist.all_reduce(total, op=dist.ReduceOp.AVG)
        assert total.item() == pytest.approx(losses[step], rel=1e-5)
    for name, p in reference.named_parameters():
        torch.testing.assert_close(model.get_parameter(name).full_tensor(), p.detach())


# -- faults and records --------------------------------------------------------------


@pytest.mark.fake_world(2, values="exact", fail={"all_reduce": 2})
def test_marker_fault_fires_on_every_rank(rank: int, collectives) -> None:
    dist.all_reduce(torch.ones(1))
    with pytest.raises(dist.DistBackendError, match=f"call 2 of all_reduce by rank {rank}"):
        dist.all_reduce(torch.ones(1))
    t = torch.ones(1)
    dist.all_reduce(t)
    assert t.item() == 2.0
    assert [r.failed for r in collectives] == [False, True, False]
    assert {r.rank for r in collectives} == {rank}


@pytest.mark.fake_world(3, values="exact")
def test_fault_armed_by_one_rank_fires_on_that_rank(rank: int, fake_world) -> None:
    if rank == 1:
        fake_world.fail("all_reduce", at="wait")
    t = torch.ones(1)
    work = dist.all_reduce(t, async_op=True)
    if rank == 1:
        with pytest.raises(dist.DistBackendError, match="injected fault"):
            work.wait()
        assert t.item() == 1.0  # a failed call writes nothing
    else:
        work.wait()
        assert t.item() == 3.0  # the others still got every rank's value


def test_world_log_says_which_rank_issued_each_record() -> None:
    with FakeWorld(3, values="exact") as world:
        def program() -> None:
            alone = dist.new_group([1])  # every rank makes it, as c10d requires
            if dist.get_rank() == 1:
                dist.barrier(group=alone)
            else:
                dist.all_reduce(torch.ones(2), group=dist.new_group([0, 2]))

        world.run(program)
        log = world.collectives
        assert sorted((r.rank, r.op) for r in log) == [(0, "all_reduce"), (1, "barrier"), (2, "all_reduce")]
        assert world.calls("all_reduce") == 2


# -- hangs and errors -----------------------------------------------------------------


def test_skipped_collective_fails_at_once_naming_each_rank() -> None:
    def program() -> None:
        if dist.get_rank() != 2:
            dist.all_reduce(torch.ones(1))

    # Found when no rank can run, not after a timeout: a hang would meet
    # the suite's pytest-timeout instead (timings live in benchmarks/).
    with FakeWorld(3, values="exact") as world, pytest.raises(FakeWorldDeadlock) as info:
        world.run(program)
    text = str(info.value)
    assert "rank 0 waits in all_reduce on group default_pg at test_exact.py:" in text
    assert "rank 2 finished its program" in text
    assert "ranks 0 and 2 diverge on group default_pg (ranks 0-2) at its call 1" in text


def test_recv_no_one_sends_to_is_a_deadlock() -> None:
    def program() -> None:
        if dist.get_rank() == 1:
            dist.recv(torch.zeros(1), src=0)

    with FakeWorld(2, values="exact") as world, pytest.raises(FakeWorldDeadlock) as info:
        world.run(program)
    assert "rank 1 waits in recv on group default_pg" in str(info.value)
    assert "rank 0 finished its program" in str(info.value)


def test_pytest_timeout_ends_an_exact_world_and_the_run_goes_on(run_tests) -> None:
    """NOTE [Signals in exact worlds]: with pytest-timeout's default (signal)
    method, a rank that loops forever while rank 0 waits for it ends at the
    test's timeout; the world is torn down and the next test runs."""
    result = run_tests(
        """
        @pytest.mark.timeout(2)
        @pytest.mark.fake_world(3, values="exact")
        def test_loops(rank):
            if rank == 1:
                while True:
                    pass
            dist.barrier()

        @pytest.mark.fake_world(3, values="exact")
        def test_next(rank):
            t = torch.ones(1)
            dist.all_reduce(t)
            assert t.item() == 3.0
        """.replace("\n        ", "\n"),
        "-p", "timeout", "--timeout-method=signal", "--durations=2",
    )
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(["*Failed: Timeout (>2.0s) from pytest-timeout*"])
    durations = [line for line in result.stdout.lines if line.strip().endswith("test_loops[w3-exact]")]
    assert durations and float(durations[0].split("s")[0]) < 10  # the timeout's 2 s, not the store's 300


def mismatch_raised(program: Callable[[], None], **world: object) -> str:
    """The DistBackendError an exact world of two running ``program`` ends with."""
    with FakeWorld(2, values="exact", **world) as w, pytest.raises(dist.DistBackendError) as info:
        w.run(program)
    return str(info.value)


def test_shape_mismatch_fails_every_rank_with_both_calls() -> None:
    """Worded as the check across ranks words it (#23, point 5): the group's
    label, not its number, and each call's line."""
    def program() -> None:
        dist.all_reduce(torch.ones(dist.get_rank() + 1))

    line = program.__code__.co_firstlineno + 1
    assert mismatch_raised(program) == (
        f"ranks 0 and 1 diverge on group default_pg (ranks 0, 1) at its call 1: rank 0 all_reduce float32[1] SUM "
        f"at test_exact.py:{line}; rank 1 all_reduce float32[2] SUM at test_exact.py:{line} - on a cluster this "
        "is a size mismatch: gloo raises, NCCL hangs or corrupts data"
    )


def test_without_records_a_mismatch_is_worded_alike_without_lines() -> None:
    """The backend only finds a mismatch; Python words it (NOTE [Mismatches
    are worded in Python]), so the words are the check's even with nothing
    recorded, and a rank that catches the error reads them too."""
    caught = {}

    def program() -> None:
        try:
            dist.all_reduce(torch.ones(2, dtype=torch.float64 if dist.get_rank() else torch.float32))
        except dist.DistBackendError as e:
            caught[dist.get_rank()] = str(e)

    with FakeWorld(2, values="exact", record=False) as world:
        world.run(program)
    words = (
        "ranks 0 and 1 diverge on group default_pg (ranks 0, 1) at its call 1: rank 0 all_reduce float32[2] SUM; "
        "rank 1 all_reduce float64[2] SUM - on a cluster this is a dtype mismatch: gloo raises, NCCL reads the bytes "
        "as the wrong type"
    )
    assert caught == {0: f"fakepg: {words}", 1: f"fakepg: {words}"}


def test_a_send_and_recv_that_disagree_fail_both_ranks_naming_both() -> None:
    def program() -> None:
        if dist.get_rank() == 0:
            dist.send(torch.ones(3), 1)
        else:
            dist.recv(torch.ones(2), 0)

    send, recv = program.__code__.co_firstlineno + 2, program.__code__.co_firstlineno + 4
    assert mismatch_raised(program) == (
        f"ranks 0 and 1 diverge on point-to-point 0 -> 1: rank 0 send float32[3] to rank 1 at test_exact.py:{send}; "
        f"rank 1 recv float32[2] from rank 0 at test_exact.py:{recv} - on a cluster this is a size mismatch: the "
        "receiver gets the wrong bytes, or both ranks hang"
    )


def test_all_to_all_single_splits_that_disagree_name_the_rows() -> None:
    def program() -> None:
        rank = dist.get_rank()
        dist.all_to_all_single(torch.zeros(3), torch.zeros(3), [1, 2] if rank == 0 else [2, 1], [1, 2])

    assert mismatch_raised(program) == (
        "ranks 0 and 1 diverge on group default_pg (ranks 0, 1) at its call 1: rank 0 all_to_all_single float32[3] "
        "expects 2 rows from rank 1, which sends it 1 - on a cluster this is a size mismatch: gloo raises, NCCL hangs "
        "or corrupts data (rank 0 at test_exact.py:627; rank 1 at test_exact.py:627)"
    )


def test_ranks_passing_different_numbers_of_tensors_diverge() -> None:
    """all_gather_coalesced's sizes may differ per rank, its count may not."""
    def program() -> None:
        inputs = [torch.ones(2) for _ in range(2 + dist.get_rank())]
        dist.all_gather_coalesced([[torch.zeros(2) for _ in inputs] for _ in range(2)], inputs)

    assert mismatch_raised(program, record=False) == (
        "ranks 0 and 1 diverge on group default_pg (ranks 0, 1) at its call 1: rank 0 all_gather_coalesced "
        "float32[2], float32[2]; rank 1 all_gather_coalesced float32[2], float32[2], float32[2] - on a cluster the "
        "ranks pass different numbers of tensors: gloo raises, NCCL hangs or corrupts data"
    )


def test_a_mismatch_on_a_mesh_dimension_names_it_and_hides_torchs_frames(run_tests) -> None:
    """A dp1 x tp2 mesh's tp is the whole world: the group carries both labels;
    the failure shows the test's line, not all_reduce's body."""
    result = run_tests(
        """
        @pytest.mark.fake_world(2, values="exact", mesh={"dp": 1, "tp": 2})
        def test_it(rank, device_mesh):
            dist.all_reduce(torch.ones(2 + rank), group=device_mesh["tp"].get_group())
        """.replace("\n        ", "\n"),
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*DistBackendError: ranks 0 and 1 diverge on group default_pg/tp (ranks 0, 1)*"])
    text = result.stdout.str()
    assert "def all_reduce" not in text and "c10d_logger" not in text


def test_first_rank_to_raise_stops_the_world_and_is_reported() -> None:
    def program() -> None:
        if dist.get_rank() == 1:
            raise KeyError("only on rank 1")
        dist.barrier()

    with FakeWorld(3, values="exact") as world, pytest.raises(KeyError) as info:
        world.run(program)
    assert "raised by rank 1 of an exact fake world of 3" in info.value.__notes__[0]


def test_world_is_clean_after_an_exact_run() -> None:
    c10d = dist.distributed_c10d
    before = c10d._world
    with FakeWorld(2, values="exact") as world:
        assert world.run(dist.get_rank) == [0, 1]
        with pytest.raises(RuntimeError, match="only available inside a rank's program"):
            world.rank
    assert c10d._world is before and not dist.is_initialized()
    with FakeWorld(2) as world:  # a uniform world after it works as ever
        t = torch.ones(1)
        dist.all_reduce(t)
        assert t.item() == 2.0


def test_64_ranks() -> None:
    with FakeWorld(64, values="exact") as world:
        def program() -> float:
            t = torch.tensor([float(dist.get_rank())])
            dist.all_reduce(t)
            return t.item()

        assert world.run(program) == [float(sum(range(64)))] * 64


# -- misuse ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rank": 1}, "rank=1 was given with values='exact'"),
        ({"backend": "fake"}, "values='exact' needs the fakepg backend"),
    ],
)
def test_exact_argument_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FakeWorld(2, values="exact", **kwargs)


def test_run_needs_an_exact_world() -> None:
    with FakeWorld(2) as world, pytest.raises(RuntimeError, match="values='uniform'"):
        world.run(print)


# -- under pytest ----------------------------------------------------------------------


def test_fixtures_per_rank_and_shared(run_tests) -> None:
    result = run_tests(
        """
        import json
        SEEN = []

        @pytest.fixture
        def made_once():
            SEEN.append("fixture")
            return []

        @pytest.mark.fake_world(3, values="exact", mesh=(3,))
        def test_it(rank, world_size, device_mesh, collectives, fake_world, fake_store, tmp_path, made_once):
            made_once.append(rank)
            assert fake_world.rank == rank == dist.get_rank() == device_mesh.get_rank()
            (tmp_path / f"rank{rank}").write_text("x")
            fake_store.set(f"k{rank}", "v")
            dist.all_reduce(torch.ones(1))  # rank 2 completes it, and goes on first
            assert collectives.ops == ["all_reduce"] and collectives[0].rank == rank
            if rank == 2:
                assert sorted(made_once) == [0, 1, 2] and SEEN == ["fixture"]
                assert sorted(p.name for p in tmp_path.iterdir()) == ["rank0", "rank1", "rank2"]
                assert fake_store.get("k0") == b"v"

        def test_after():
            assert SEEN == ["fixture"]
        """.replace("\n        ", "\n"),
        "--fake-world-ranks=all", "-v",
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*test_it[[]w3-3-exact[]] PASSED*"])


def test_a_deadlock_fails_the_test_with_the_report(run_tests) -> None:
    result = run_tests(
        """
        @pytest.mark.fake_world(2, values="exact")
        def test_it(rank):
            if rank == 0:
                dist.all_reduce(torch.ones(1))
        """.replace("\n        ", "\n"),
        "-n", "2",
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*FakeWorldDeadlock: no rank can run*",
        "*rank 0 waits in all_reduce on group default_pg at test_it.py:6",
        "*rank 1 finished its program",
        "*ranks 0 and 1 diverge on group default_pg (ranks 0, 1) at its call 1*",
    ])


def test_report_counts_every_ranks_calls(run_tests) -> None:
    result = run_tests(
        """
        @pytest.mark.fake_world(2, values="exact")
        def test_it():
            dist.all_reduce(torch.ones(4))
        """.replace("\n        ", "\n"),
        "--fake-world-report",
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([
        "*test_it.py::test_it[[]w2-exact[]] (world 2, every rank, exact)",
        "    group default_pg (ranks 0, 1) * 2 calls * 32 B",
        "        all_reduce * 2 calls * 32 B",
    ])


def test_runs_do_not_stack_excepthooks() -> None:
    # init_process_group wraps sys.excepthook in every rank's program; a world
    # that runs many programs must not end up a wrapper per rank per run deep.
    import sys

    with FakeWorld(2, values="exact") as world:
        hook = sys.excepthook
        for _ in range(3):
            world.run(lambda: None)
            assert sys.excepthook is hook


def test_a_rank_leaves_nothing_per_thread_for_the_next_run() -> None:
    # Rank 0 runs on the caller's thread, the others on threads kept between
    # runs; torch keeps these per thread.
    def careless() -> None:
        torch.set_default_device("meta")
        torch.set_grad_enabled(False)

    with FakeWorld(2, values="exact") as world:
        world.run(careless)
        assert (torch.zeros(1).device.type, torch.is_grad_enabled()) == ("cpu", True)  # rank 0 ran on this thread
        seen = world.run(lambda: (torch.zeros(1).device.type, torch.is_grad_enabled()))
    assert seen == [("cpu", True), ("cpu", True)]


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux: CPU affinity")
def test_ranks_and_what_they_start_run_on_the_callers_cpus_and_policy() -> None:
    # NOTE [Hand-overs stay on one CPU]: a hand-over wakes the next rank's
    # thread held to one CPU, as SCHED_BATCH; it must be itself again before
    # its program goes on, or threads it starts would inherit the hold.
    def seen() -> tuple[set[int], int]:
        return os.sched_getaffinity(0), os.sched_getscheduler(0)

    def program() -> list[tuple[set[int], int]]:
        first = seen()
        dist.barrier()  # every rank hands over, and is handed back to
        resumed = seen()
        started: list[tuple[set[int], int]] = []
        thread = threading.Thread(target=lambda: started.append(seen()))
        thread.start()
        thread.join()
        return [first, resumed, *started]

    mine = seen()
    with FakeWorld(4, values="exact") as world:
        for _ in range(3):  # pooled threads, woken again
            assert world.run(program) == [[mine] * 3] * 4
    assert seen() == mine
    pooled = [t.native_id for t in threading.enumerate() if t.name == "fakepg-rank"]
    assert len(pooled) >= 3
    assert [(os.sched_getaffinity(tid), os.sched_getscheduler(tid)) for tid in pooled] == [mine] * len(pooled)


@pytest.mark.parametrize("how", ["set_default_device", "with torch.device"])
def test_every_rank_starts_with_the_callers_default_device_and_grad_mode(how: str) -> None:
    def program() -> tuple[str, bool]:
        return torch.zeros(1).device.type, torch.is_grad_enabled()

    with FakeWorld(3, values="exact") as world:
        world.run(program)  # the pooled threads have run on cpu before
        with torch.no_grad():
            if how == "set_default_device":
                torch.set_default_device("meta")
                try:
                    seen = world.run(program)
                finally:
                    torch.set_default_device(None)
            else:
                with torch.device("meta"):
                    seen = world.run(program)
        after = world.run(program)
    assert seen == [("meta", False)] * 3
    assert after == [("cpu", True)] * 3


@pytest.mark.filterwarnings("ignore:Sparse invariant checks:UserWarning")
@pytest.mark.fake_world(2, values="exact")
def test_sparse_all_reduce_is_refused_not_wrong() -> None:
    t = torch.sparse_coo_tensor([[0]], [1.0], (2,))
    with pytest.raises(RuntimeError, match="sparse all_reduce has no exact values yet"):
        dist.all_reduce(t)
