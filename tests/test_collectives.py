"""Every collective, under both value semantics, on the default group and on a
DeviceMesh sub-group: exact output values and the exact record it leaves.

`uniform` values are what a real world computes when every rank holds the
data this rank holds; `copy` values are torch's stock fake backend's.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.distributed as dist

from pytest_fakepg import CollectiveRecord

from .conftest import Group, arange

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # torch 2.13 renames


def only_record(g: Group, op: str, **expected: Any) -> CollectiveRecord:
    """The single record the test left; its group fields and `expected`."""
    log = g.world.collectives
    assert log.ops == [op]
    rec = log[0]
    pg = g.pg if g.pg is not None else g.world.pg
    assert (rec.group_name, rec.group_size, rec.group_rank) == (pg.group_name, g.size, g.rank)
    assert tuple(rec.ranks) == tuple(g.ranks)
    for field, value in expected.items():
        assert getattr(rec, field) == value, field
    return rec


# -- all_reduce ---------------------------------------------------------------


def test_all_reduce_sum(group: Group) -> None:
    x = arange(2, 3)
    t = x.clone()
    dist.all_reduce(t, group=group.pg)
    expected = x * group.size if group.values == "uniform" else x
    assert torch.equal(t, expected)
    only_record(group, "all_reduce", shapes=((2, 3),), dtype=torch.float32, bytes=24,
                reduce_op=dist.ReduceOp.SUM, peer=None, failed=False)


@pytest.mark.parametrize(
    ("op", "expected"),
    [
        (dist.ReduceOp.AVG, lambda x, n: x),
        (dist.ReduceOp.MIN, lambda x, n: x),
        (dist.ReduceOp.MAX, lambda x, n: x),
        (dist.ReduceOp.PRODUCT, lambda x, n: x**n),
    ],
    ids=["avg", "min", "max", "product"],
)
def test_all_reduce_float_ops(group: Group, op: Any, expected: Any) -> None:
    x = torch.tensor([0.5, 1.0, 2.0])
    t = x.clone()
    dist.all_reduce(t, op=op, group=group.pg)
    want = expected(x, group.size) if group.values == "uniform" else x
    assert torch.equal(t, want)
    only_record(group, "all_reduce", reduce_op=op)


@pytest.mark.parametrize("op", [dist.ReduceOp.BAND, dist.ReduceOp.BOR], ids=["band", "bor"])
def test_all_reduce_bitwise_keeps_value(group: Group, op: Any) -> None:
    t = torch.tensor([0b1010, 0b0110], dtype=torch.int64)
    dist.all_reduce(t, op=op, group=group.pg)
    assert t.tolist() == [0b1010, 0b0110]


@pytest.mark.parametrize(("size", "want"), [(3, [5, 3]), (4, [0, 0])])
def test_all_reduce_bxor_depends_on_parity(size: int, want: list[int]) -> None:
    from pytest_fakepg import FakeWorld

    with FakeWorld(size) as world:
        t = torch.tensor([5, 3], dtype=torch.int32)
        dist.all_reduce(t, op=dist.ReduceOp.BXOR)
        assert t.tolist() == want
        assert world.collectives[0].reduce_op == dist.ReduceOp.BXOR


def test_all_reduce_premul_sum_scales(group: Group) -> None:
    t = torch.tensor([1.0, 2.0])
    dist.all_reduce(t, op=dist._make_nccl_premul_sum(0.5), group=group.pg)
    want = [0.5 * group.size, 1.0 * group.size] if group.values == "uniform" else [1.0, 2.0]
    assert t.tolist() == want
    only_record(group, "all_reduce", reduce_op=dist.ReduceOp.PREMUL_SUM)


def test_all_reduce_integer_sum(group: Group) -> None:
    t = torch.tensor([3, -1], dtype=torch.int32)
    dist.all_reduce(t, group=group.pg)
    n = group.size if group.values == "uniform" else 1
    assert t.tolist() == [3 * n, -n]
    only_record(group, "all_reduce", dtype=torch.int32, bytes=8)


def test_all_reduce_coalesced(group: Group) -> None:
    a, b = arange(2), arange(3, dtype=torch.float64)
    ta, tb = a.clone(), b.clone()
    with dist._coalescing_manager(group=group.pg):
        dist.all_reduce(ta, group=group.pg)
        dist.all_reduce(tb, group=group.pg)
    n = group.size if group.values == "uniform" else 1
    assert torch.equal(ta, a * n) and torch.equal(tb, b * n)
    only_record(group, "all_reduce_coalesced", shapes=((2,), (3,)), bytes=8 + 24,
                dtype=torch.float32, reduce_op=dist.ReduceOp.SUM)


# -- all_gather ---------------------------------------------------------------


def test_all_gather_fills_every_slot(group: Group) -> None:
    x = arange(2, 2)
    out = [torch.full((2, 2), -1.0) for _ in range(group.size)]
    dist.all_gather(out, x, group=group.pg)
    assert all(torch.equal(o, x) for o in out)
    only_record(group, "all_gather", shapes=((2, 2),), bytes=16, reduce_op=None)


def test_all_gather_into_tensor(group: Group) -> None:
    x = arange(2, 3)
    out = torch.full((2 * group.size, 3), -1.0)
    dist.all_gather_into_tensor(out, x, group=group.pg)
    assert torch.equal(out, x.repeat(group.size, 1))
    only_record(group, "all_gather_into_tensor", shapes=((2, 3),), bytes=24)


def test_all_gather_into_tensor_stacked_output(group: Group) -> None:
    x = arange(3)
    out = torch.full((group.size, 3), -1.0)
    dist.all_gather_into_tensor(out, x, group=group.pg)
    assert torch.equal(out, x.expand(group.size, 3))


def test_all_gather_into_tensor_rejects_wrong_output_size(group: Group) -> None:
    with pytest.raises(RuntimeError, match="output has 5 elements but must have"):
        dist.all_gather_into_tensor(torch.empty(5), torch.ones(1), group=group.pg)


def test_all_gather_coalesced(group: Group) -> None:
    a, b = arange(2), arange(1, 3)
    outs = [[torch.zeros(2), torch.zeros(1, 3)] for _ in range(group.size)]
    dist.all_gather_coalesced(outs, [a, b], group=group.pg)
    assert all(torch.equal(o[0], a) and torch.equal(o[1], b) for o in outs)
    only_record(group, "all_gather_coalesced", shapes=((2,), (1, 3)), bytes=20)


def test_all_gather_into_tensor_coalesced(group: Group) -> None:
    a, b = arange(2), arange(3)
    oa, ob = torch.zeros(2 * group.size), torch.zeros(3 * group.size)
    with dist._coalescing_manager(group=group.pg):
        dist.all_gather_into_tensor(oa, a, group=group.pg)
        dist.all_gather_into_tensor(ob, b, group=group.pg)
    assert torch.equal(oa, a.repeat(group.size)) and torch.equal(ob, b.repeat(group.size))
    only_record(group, "all_gather_into_tensor_coalesced", shapes=((2,), (3,)), bytes=20)


# -- reduce_scatter -------------------------------------------------------------


def test_reduce_scatter_list(group: Group) -> None:
    inputs = [torch.full((2,), float(i + 1)) for i in range(group.size)]
    out = torch.full((2,), -1.0)
    dist.reduce_scatter(out, inputs, group=group.pg)
    mine = float(group.rank + 1)
    n = group.size if group.values == "uniform" else 1
    assert out.tolist() == [mine * n, mine * n]
    rec = only_record(group, "reduce_scatter", reduce_op=dist.ReduceOp.SUM,
                      bytes=8 * group.size)
    assert rec.shapes == ((2,),) * group.size


def test_reduce_scatter_tensor(group: Group) -> None:
    x = arange(group.size * 2)
    out = torch.full((2,), -1.0)
    dist.reduce_scatter_tensor(out, x, group=group.pg)
    chunk = x[group.rank * 2 : group.rank * 2 + 2]
    n = group.size if group.values == "uniform" else 1
    assert torch.equal(out, chunk * n)
    only_record(group, "reduce_scatter_tensor", shapes=((group.size * 2,),),
                bytes=group.size * 8, reduce_op=dist.ReduceOp.SUM)


def test_reduce_scatter_tensor_max_keeps_chunk(group: Group) -> None:
    x = arange(group.size, 2)
    out = torch.empty(1, 2)
    dist.reduce_scatter_tensor(out, x, op=dist.ReduceOp.MAX, group=group.pg)
    assert torch.equal(out, x[group.rank : group.rank + 1])


def test_reduce_scatter_tensor_coalesced(group: Group) -> None:
    a, b = arange(group.size), arange(group.size * 3)
    oa, ob = torch.zeros(1), torch.zeros(3)
    with dist._coalescing_manager(group=group.pg):
        dist.reduce_scatter_tensor(oa, a, group=group.pg)
        dist.reduce_scatter_tensor(ob, b, group=group.pg)
    n = group.size if group.values == "uniform" else 1
    r = group.rank
    assert torch.equal(oa, a[r : r + 1] * n)
    assert torch.equal(ob, b[3 * r : 3 * r + 3] * n)
    only_record(group, "reduce_scatter_tensor_coalesced",
                shapes=((group.size,), (group.size * 3,)), bytes=group.size * 16)


# -- all_to_all ---------------------------------------------------------------


def test_all_to_all_list(group: Group) -> None:
    inputs = [torch.full((2,), float(j)) for j in range(group.size)]
    outputs = [torch.full((2,), -1.0) for _ in range(group.size)]
    dist.all_to_all(outputs, inputs, group=group.pg)
    if group.values == "uniform":
        # every peer sends this rank its input[rank]
        assert all(o.tolist() == [group.rank] * 2 for o in outputs)
    else:
        assert [o[0].item() for o in outputs] == list(range(group.size))
    only_record(group, "all_to_all", bytes=8 * group.size)


def test_all_to_all_single_equal_splits(group: Group) -> None:
    x = arange(group.size * 2)
    out = torch.full_like(x, -1.0)
    dist.all_to_all_single(out, x, group=group.pg)
    if group.values == "uniform":
        mine = x[group.rank * 2 : group.rank * 2 + 2]
        assert torch.equal(out, mine.repeat(group.size))
    else:
        assert torch.equal(out, x)
    only_record(group, "all_to_all_single", shapes=((group.size * 2,),), bytes=group.size * 8)


def test_all_to_all_single_honours_split_sizes(group: Group) -> None:
    n, r = group.size, group.rank
    in_splits = [j + 1 for j in range(n)]  # this rank sends j+1 rows to peer j
    x = torch.arange(float(sum(in_splits)))
    out_splits = [in_splits[r]] * n  # every peer sends us their in_splits[r]
    out = torch.full((sum(out_splits),), -1.0)
    if group.values == "copy":
        pytest.skip("copy values keep torch's stock approximation; see the next test")
    dist.all_to_all_single(out, x, out_splits, in_splits, group=group.pg)
    start = sum(in_splits[:r])
    assert torch.equal(out, x[start : start + in_splits[r]].repeat(n))


def test_all_to_all_single_copy_matches_stock_approximation() -> None:
    from pytest_fakepg import FakeWorld

    with FakeWorld(2, values="copy"):
        x = torch.tensor([10.0, 20.0, 30.0])
        out = torch.full((4,), -1.0)
        dist.all_to_all_single(out, x, [3, 1], [1, 2])
        assert out.tolist() == [10.0, 20.0, 30.0, 10.0]


def test_all_to_all_single_rejects_inconsistent_splits() -> None:
    from pytest_fakepg import FakeWorld

    with FakeWorld(3, rank=0) as world:
        out = torch.zeros(7)
        # Neither the same splits on every rank (each would send rank 0 one
        # row) nor a ring's (rank 1 would send rank 0 what rank 0 sends rank 2).
        with pytest.raises(RuntimeError, match=r"output_split_sizes\[2\] is 5 .* input_split_sizes\[0\] = 1 "
                                               r".*output_split_sizes\[1\] = input_split_sizes\[2\] = 3"):
            dist.all_to_all_single(out, torch.zeros(6), [1, 1, 5], [1, 2, 3])
        assert world.collectives.count() == 0


@pytest.mark.parametrize("rank", [0, 1, 3])
def test_a_ring_shift_gets_every_rank_its_neighbours_chunk(rank: int) -> None:
    """permute_tensor (context parallel's rotation): each rank sends its rows
    to the next; in a uniform world the previous rank holds the same rows."""
    import torch.distributed._functional_collectives as funcol

    from pytest_fakepg import FakeWorld

    with FakeWorld(4, rank=rank) as world:
        x = torch.arange(6.0) + 10 * rank  # flat: permute_tensor's splits count elements
        out = funcol.permute_tensor(x, [1, 2, 3, 0], group=dist.group.WORLD)
        assert torch.equal(funcol.wait_tensor(out), x)
        assert [(r.op, r.shapes) for r in world.collectives] == [("all_to_all_single", ((6,),))]


def test_a_ring_exchange_of_uneven_chunks_takes_each_from_across() -> None:
    """Rank 1 of 4 gets from peer j the chunk it sends rank (2 - j) mod 4:
    in a ring every rank's splits are this rank's, shifted by the distance."""
    from pytest_fakepg import FakeWorld

    with FakeWorld(4, rank=1):
        x = torch.arange(10.0)  # chunks for ranks 0..3: [0], [1, 2], [3, 4, 5], [6, 7, 8, 9]
        out = torch.full((10,), -1.0)
        dist.all_to_all_single(out, x, [3, 2, 1, 4], [1, 2, 3, 4])
        assert out.tolist() == [3.0, 4.0, 5.0, 1.0, 2.0, 0.0, 6.0, 7.0, 8.0, 9.0]


def test_all_to_all_list_in_a_ring() -> None:
    from pytest_fakepg import FakeWorld

    with FakeWorld(3, rank=2):
        inputs = [torch.full((j + 1,), float(j)) for j in range(3)]
        outputs = [torch.zeros(2), torch.zeros(1), torch.zeros(3)]
        dist.all_to_all(outputs, inputs)
        # peer j sends rank 2 what rank 2 sends rank (4 - j) mod 3
        assert [o.tolist() for o in outputs] == [[1.0] * 2, [0.0], [2.0] * 3]


# -- rooted ops and point to point ----------------------------------------------


@pytest.mark.parametrize("root", ["self", "other"])
def test_broadcast_keeps_buffer(group: Group, root: str) -> None:
    src = group.rank if root == "self" else (group.rank + 1) % group.size
    t = arange(3)
    dist.broadcast(t, group_src=src, group=group.pg)
    assert torch.equal(t, arange(3))
    only_record(group, "broadcast", peer=group.global_rank(src), reduce_op=None, bytes=12)


@pytest.mark.parametrize("root", ["self", "other"])
def test_reduce_only_root_gets_result(group: Group, root: str) -> None:
    dst = group.rank if root == "self" else (group.rank + 1) % group.size
    t = arange(2)
    dist.reduce(t, group_dst=dst, group=group.pg)
    reduced = group.values == "uniform" and root == "self"
    assert torch.equal(t, arange(2) * (group.size if reduced else 1))
    only_record(group, "reduce", peer=group.global_rank(dst), reduce_op=dist.ReduceOp.SUM)


def test_gather_on_root_fills_every_slot(group: Group) -> None:
    x = arange(2)
    out = [torch.full((2,), -1.0) for _ in range(group.size)]
    dist.gather(x, out, group_dst=group.rank, group=group.pg)
    assert all(torch.equal(o, x) for o in out)
    only_record(group, "gather", peer=group.global_rank(group.rank), bytes=8)


def test_gather_off_root_records_peer(group: Group) -> None:
    dst = (group.rank + 1) % group.size
    dist.gather(arange(2), None, group_dst=dst, group=group.pg)
    only_record(group, "gather", peer=group.global_rank(dst))


needs_gather_single = pytest.mark.skipif(
    not hasattr(dist, "gather_single"), reason="this torch has no dist.gather_single (2.14.1 and 2.15 have it)"
)


@needs_gather_single
@pytest.mark.parametrize("name", ["gather_single", "gather_into_tensor"])
def test_gather_into_tensor_on_root_fills_every_chunk(group: Group, name: str) -> None:
    x = arange(2)
    out = torch.full((2 * group.size,), -1.0)
    getattr(dist, name)(x, out, group_dst=group.rank, group=group.pg)
    assert torch.equal(out, x.repeat(group.size))  # uniform and copy alike: every chunk is this rank's
    only_record(group, "gather_into_tensor", shapes=((2,),), bytes=8, peer=group.global_rank(group.rank))


@needs_gather_single
def test_gather_into_tensor_off_root_records_peer(group: Group) -> None:
    dst = (group.rank + 1) % group.size
    dist.gather_single(arange(2), None, group_dst=dst, group=group.pg)
    only_record(group, "gather_into_tensor", peer=group.global_rank(dst))


@needs_gather_single
def test_gather_into_tensor_checks_the_roots_output(group: Group) -> None:
    with pytest.raises(RuntimeError, match=r"gather_into_tensor: output has 3 elements"):
        dist.gather_single(arange(2), torch.zeros(3), group_dst=group.rank, group=group.pg)


def test_scatter_on_root_takes_own_chunk(group: Group) -> None:
    inputs = [torch.full((2,), float(j)) for j in range(group.size)]
    out = torch.full((2,), -1.0)
    dist.scatter(out, inputs, group_src=group.rank, group=group.pg)
    assert out.tolist() == [float(group.rank)] * 2
    only_record(group, "scatter", peer=group.global_rank(group.rank), bytes=8 * group.size)


def test_scatter_off_root_leaves_buffer(group: Group) -> None:
    src = (group.rank + 1) % group.size
    out = torch.full((2,), 7.0)
    dist.scatter(out, None, group_src=src, group=group.pg)
    assert out.tolist() == [7.0, 7.0]  # NOTE [Data this rank cannot know]
    only_record(group, "scatter", peer=group.global_rank(src), shapes=((2,),))


def test_send_records_peer(group: Group) -> None:
    peer = (group.rank + 1) % group.size
    t = arange(3)
    dist.send(t, group_dst=peer, group=group.pg)
    assert torch.equal(t, arange(3))
    only_record(group, "send", peer=group.global_rank(peer), bytes=12)


def test_recv_leaves_buffer(group: Group) -> None:
    peer = (group.rank + 1) % group.size
    t = torch.full((3,), 7.0)
    dist.recv(t, group_src=peer, group=group.pg)
    assert t.tolist() == [7.0] * 3
    only_record(group, "recv", peer=group.global_rank(peer))


def test_recv_from_any_source_names_lowest_other_rank(group: Group) -> None:
    t = torch.full((1,), 7.0)
    src = dist.recv(t, group=group.pg)
    assert t.tolist() == [7.0]
    assert src == group.global_rank(0)  # NOTE [recv from any source]
    only_record(group, "recv", peer=group.global_rank(0))


def test_barrier(group: Group) -> None:
    dist.barrier(group=group.pg)
    only_record(group, "barrier", shapes=(), dtype=None, bytes=0)


# -- work objects ----------------------------------------------------------------


def test_async_work_is_complete_with_outputs(group: Group) -> None:
    t = torch.ones(2)
    work = dist.all_reduce(t, group=group.pg, async_op=True)
    assert work.is_completed() and work.is_success()
    fut = work.get_future()
    assert fut.done()
    (result,) = fut.value()
    assert result is t or torch.equal(result, t)
    assert work.wait() is True


def test_outputs_that_are_views_of_grad_requiring_tensors_are_written() -> None:
    from pytest_fakepg import FakeWorld

    with FakeWorld(2):
        base = torch.zeros(2, 4, requires_grad=True).clone()  # non-leaf
        out = base[0]  # a view autograd tracks
        dist.all_gather_into_tensor(out, torch.tensor([1.0, 2.0]))
        assert base[0].tolist() == [1.0, 2.0, 1.0, 2.0]


def test_one_tensor_coalesced_calls_are_recorded_as_the_plain_op() -> None:
    import torch.distributed._functional_collectives as funcol

    from pytest_fakepg import FakeWorld

    with FakeWorld(4, rank=2) as world:
        gathered = funcol.all_gather_tensor(torch.tensor([1.0, 2.0]), 0, world.pg)
        scattered = funcol.reduce_scatter_tensor(torch.arange(8.0), "sum", 0, world.pg)
        assert gathered.tolist() == [1.0, 2.0] * 4
        assert scattered.tolist() == [16.0, 20.0]  # chunk 2 = [4, 5], times 4
        assert world.collectives.ops == ["all_gather_into_tensor", "reduce_scatter_tensor"]


def test_record_ranks_are_a_tuple_on_every_group(group: Group) -> None:
    dist.barrier(group=group.pg)
    ranks = group.world.collectives[0].ranks
    assert type(ranks) is tuple and ranks == tuple(group.ranks)


def test_sequence_numbers_count_each_groups_collectives(group: Group) -> None:
    pg = group.pg if group.pg is not None else group.world.pg
    before = pg._get_sequence_number_for_group()
    dist.barrier(group=group.pg)
    dist.all_reduce(torch.ones(1), group=group.pg)
    assert pg._get_sequence_number_for_group() == before + 2


# -- object collectives on a rank that cannot know the data ------------------------
# NOTE [Objects this rank cannot know]: the uniform answer, or a clear error.


@pytest.mark.parametrize("values", ["uniform", "copy"])
def test_broadcast_object_list_off_the_source_keeps_this_ranks_objects(values: str) -> None:
    from pytest_fakepg import FakeWorld

    with FakeWorld(4, rank=2, values=values) as world:
        box = [{"lr": 0.1}, "x" * 1000]
        mine = list(box)
        dist.broadcast_object_list(box, src=0)
        assert box == mine and box[0] is not mine[0]  # fresh copies, as received
        assert world.collectives.ops == ["broadcast", "broadcast"]
        sizes, payload = world.collectives
        assert (sizes.peer, sizes.dtype, payload.dtype) == (0, torch.int64, torch.uint8)
    with FakeWorld(4, rank=0) as world:  # on the source: torch's own
        box = [{"lr": 0.1}, "x" * 1000]
        dist.broadcast_object_list(box, src=0)
        assert [r.shapes for r in world.collectives] == [sizes.shapes, payload.shapes]


def test_recv_object_list_keeps_this_ranks_objects() -> None:
    from pytest_fakepg import FakeWorld

    with FakeWorld(2, rank=1) as world:
        box = [[1, 2, 3]]
        assert dist.recv_object_list(box, src=0) == 0
        assert box == [[1, 2, 3]]
        assert world.collectives.ops == ["recv", "recv"]


def test_recv_object_list_of_placeholders_says_what_to_do() -> None:
    """torch.distributed.pipelining receives a neighbour's metadata into
    [None]: a uniform world cannot stand for it, and says so at the call."""
    from torch.distributed.pipelining import PipelineStage, ScheduleGPipe

    from pytest_fakepg import FakeWorld

    with FakeWorld(2, rank=1) as world:
        stage = PipelineStage(torch.nn.Linear(4, 4), stage_index=1, num_stages=2, device=torch.device("cpu"))
        schedule = ScheduleGPipe(stage, n_microbatches=2, loss_fn=lambda out, target: out.sum())
        with pytest.raises(RuntimeError) as info:
            schedule.step(target=torch.ones(4, 4))
        assert "recv" not in world.collectives.ops[-1:]  # refused before the object's size is received
    line = info.traceback[0].lineno + 1  # the test's own line that stepped the schedule
    assert str(info.value) == (
        f"recv_object_list from rank 0 (reached from test_collectives.py:{line}) in a fake "
        "world where only rank 1 runs, so what the sender sends cannot be known, and this rank's list holds only "
        "placeholders ([None]) to stand for it. torch.distributed.pipelining receives each stage's metadata this "
        "way: run pipeline stages with values='exact', where every rank runs"
    )


def test_scatter_object_list_takes_this_ranks_entry_or_says_why_not() -> None:
    from pytest_fakepg import FakeWorld

    with FakeWorld(3, rank=2) as world:
        out = [None]
        dist.scatter_object_list(out, ["a", "bb", "ccc"], src=0)
        assert out == ["ccc"]
        assert world.collectives.ops == ["broadcast", "scatter", "scatter"]
        with pytest.raises(ValueError, match=r"the objects that group rank 0 scatters exist only on that rank"):
            dist.scatter_object_list(out, None, src=0)


def test_all_gather_object_gives_this_ranks_object_everywhere() -> None:
    from pytest_fakepg import FakeWorld

    with FakeWorld(3, rank=1):
        out = [None] * 3
        dist.all_gather_object(out, {"rank": 1})
        assert out == [{"rank": 1}] * 3


def test_outputs_larger_than_the_input_are_refused_not_read_past(group: Group) -> None:
    """The direct-memory path copies only what the input holds."""
    with pytest.raises(RuntimeError, match=r"exceeds dimension size \(2\)"):
        dist.all_gather([torch.empty(5) for _ in range(group.size)], torch.ones(2), group=group.pg)


@pytest.mark.parametrize("op", ["all_gather_into_tensor", "all_gather"])
def test_in_place_all_gather_whose_input_is_a_view_of_the_output(group: Group, op: str) -> None:
    """NOTE [In-place collectives]: FSDP2 all-gathers into the buffer its
    input is a chunk of. A negated view takes the ATen path, which refuses
    partly overlapping copies unless the backend copies the source first."""
    out = arange(group.size * 3)
    chunk = out[group.rank * 3 : group.rank * 3 + 3]
    mine = -chunk.clone()
    inp = torch._neg_view(chunk)
    if op == "all_gather_into_tensor":
        dist.all_gather_into_tensor(out, inp, group=group.pg)
        assert torch.equal(out, mine.repeat(group.size))
    else:
        outs = list(out.view(group.size, 3).unbind())
        dist.all_gather(outs, inp, group=group.pg)
        assert torch.equal(out, mine.repeat(group.size))


# -- bad arguments: c10d's own validators ----------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: dist.gather(torch.ones(2), [torch.ones(2)] * 3, dst=0),
         "fakepg gather: Incorrect output list size 3. Output list size should be 4, same as size of the process "
         "group."),
        (lambda: dist.scatter(torch.ones(2), [torch.ones(2)] * 5, src=0),
         "fakepg scatter: Incorrect input list size 5. Input list size should be 4, same as size of the process "
         "group."),
        (lambda: dist.all_gather([torch.ones(2)] * 3, torch.ones(2)),
         "fakepg all_gather: Incorrect output list size 3. Output list size should be 4, same as size of the process "
         "group."),
        (lambda: dist.all_to_all([torch.ones(2)] * 4, [torch.ones(2)] * 3),
         "fakepg all_to_all: input tensor list size 3 does not match world size 4"),
        (lambda: dist.group.WORLD.broadcast([torch.ones(2)], _root(7)),
         "fakepg broadcast: invalid root rank: 7 (a group of 4 has ranks 0 to 3)"),
        (lambda: dist.group.WORLD.reduce([torch.ones(2)], _root(-1, dist.ReduceOptions)),
         "fakepg reduce: invalid root rank: -1 (a group of 4 has ranks 0 to 3)"),
    ],
    ids=["gather", "scatter", "all_gather", "all_to_all", "broadcast", "reduce"],
)
def test_bad_arguments_are_refused_as_gloo_refuses_them_and_not_counted(call: Any, message: str) -> None:
    """The checks are c10d's (gloo's words), the op named; nothing is recorded."""
    from pytest_fakepg import FakeWorld

    with FakeWorld(4, rank=0) as world:
        with pytest.raises(RuntimeError) as info:
            call()
        assert str(info.value).splitlines()[0] == message
        assert world.collectives.count() == 0


def _root(rank: int, options: Any = None) -> Any:
    opts = (options or dist.BroadcastOptions)()
    opts.rootRank = rank
    return opts
