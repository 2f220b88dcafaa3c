"""Exact worlds under pytest: fixtures, reports, and what each rank's thread starts with."""

from __future__ import annotations

import os
import threading

import pytest
import torch
import torch.distributed as dist

from pytest_fakepg import ExactWorld

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # torch 2.13 renames


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

    with ExactWorld(2) as world:
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

    with ExactWorld(2) as world:
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
    with ExactWorld(4) as world:
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

    with ExactWorld(3) as world:
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
