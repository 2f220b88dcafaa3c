"""Exact worlds: faults, records, hangs, mismatches and misuse, each named."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.distributed as dist

from pytest_fakepg import ExactWorld, FakeWorld
from pytest_fakepg import FakeWorldDeadlock

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # torch 2.13 renames


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
    with ExactWorld(3) as world:
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
    with ExactWorld(3) as world, pytest.raises(FakeWorldDeadlock) as info:
        world.run(program)
    text = str(info.value)
    assert "rank 0 waits in all_reduce on group default_pg at test_exact_failures.py:" in text
    assert "rank 2 finished its program" in text
    assert "ranks 0 and 2 diverge on group default_pg (ranks 0-2) at its call 1" in text


def test_recv_no_one_sends_to_is_a_deadlock() -> None:
    def program() -> None:
        if dist.get_rank() == 1:
            dist.recv(torch.zeros(1), src=0)

    with ExactWorld(2) as world, pytest.raises(FakeWorldDeadlock) as info:
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
        "-p", "timeout", "--timeout-method=signal",
        timeout=120,  # a guard: without the signal, the store's 300 s wait would end it
    )
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(["*Failed: Timeout (>2.0s) from pytest-timeout*"])


def mismatch_raised(program: Callable[[], None], **world: object) -> str:
    """The DistBackendError an exact world of two running ``program`` ends with."""
    with ExactWorld(2, **world) as w, pytest.raises(dist.DistBackendError) as info:
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
        f"at test_exact_failures.py:{line}; rank 1 all_reduce float32[2] SUM at test_exact_failures.py:{line} - on a cluster this "
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

    with ExactWorld(2, record=False) as world:
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
        f"ranks 0 and 1 diverge on point-to-point 0 -> 1: rank 0 send float32[3] to rank 1 at test_exact_failures.py:{send}; "
        f"rank 1 recv float32[2] from rank 0 at test_exact_failures.py:{recv} - on a cluster this is a size mismatch: the "
        "receiver gets the wrong bytes, or both ranks hang"
    )


def test_all_to_all_single_splits_that_disagree_name_the_rows() -> None:
    def program() -> None:
        rank = dist.get_rank()
        dist.all_to_all_single(torch.zeros(3), torch.zeros(3), [1, 2] if rank == 0 else [2, 1], [1, 2])

    line = program.__code__.co_firstlineno + 2
    assert mismatch_raised(program) == (
        "ranks 0 and 1 diverge on group default_pg (ranks 0, 1) at its call 1: rank 0 all_to_all_single float32[3] "
        "expects 2 rows from rank 1, which sends it 1 - on a cluster this is a size mismatch: gloo raises, NCCL hangs "
        f"or corrupts data (rank 0 at test_exact_failures.py:{line}; rank 1 at test_exact_failures.py:{line})"
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

    with ExactWorld(3) as world, pytest.raises(KeyError) as info:
        world.run(program)
    assert "raised by rank 1 of an exact fake world of 3" in info.value.__notes__[0]


def test_world_is_clean_after_an_exact_run() -> None:
    c10d = dist.distributed_c10d
    before = c10d._world
    with ExactWorld(2) as world:
        assert world.run(dist.get_rank) == [0, 1]
        with pytest.raises(RuntimeError, match="only available inside a rank's program"):
            world.rank
    assert c10d._world is before and not dist.is_initialized()
    with FakeWorld(2) as world:  # a uniform world after it works as ever
        t = torch.ones(1)
        dist.all_reduce(t)
        assert t.item() == 2.0


def test_64_ranks() -> None:
    with ExactWorld(64) as world:
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
        ExactWorld(2, **kwargs)


def test_run_needs_an_exact_world() -> None:
    with FakeWorld(2) as world, pytest.raises(RuntimeError, match="values='uniform'"):
        world.run(print)


