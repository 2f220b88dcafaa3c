"""values="exact": every rank runs, and collectives compute exactly: the
collectives, and programs that differ per rank. More in test_exact_*.py."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol

from pytest_fakepg import ExactWorld

from .conftest import DEVICES, exact

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # torch 2.13 renames


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


def test_records_read_after_a_run_keep_each_groups_label() -> None:
    """Megatron names its groups (group_desc="TP"); after run() the world's
    records still say so, not the group's number."""
    with ExactWorld(4) as world:

        def program() -> list[str]:
            pairs = [dist.new_group([0, 1], group_desc="TP"), dist.new_group([2, 3], group_desc="TP")]
            dist.all_reduce(torch.ones(1), group=pairs[dist.get_rank() // 2])
            return [r.group for r in world.collectives]

        assert world.run(program) == [["TP"]] * 4
        assert [(r.rank, r.group) for r in world.collectives] == [(0, "TP"), (1, "TP"), (2, "TP"), (3, "TP")]
