"""Real training code in a fake world: torchrun's environment while a world
is up (restored exactly after), and threads a rank starts acting as that
rank, in worlds of one rank and in exact worlds."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol

from pytest_fakepg._compat.state import traces
from pytest_fakepg import ExactWorld, FakeWorld

from .conftest import RunTests

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

TORCHRUN = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "ROLE_NAME",
            "ROLE_WORLD_SIZE", "GROUP_WORLD_SIZE", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT",
            "TORCHELASTIC_MAX_RESTARTS", "MASTER_ADDR", "MASTER_PORT")


def torchrun_env() -> dict[str, str | None]:
    return {name: os.environ.get(name) for name in TORCHRUN}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in TORCHRUN:
        monkeypatch.delenv(name, raising=False)


# -- torchrun's environment ---------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "rank", "local", "expected_local"),
    [(16, 11, None, ("3", "8", "1")), (4, 3, None, ("3", "4", "0")), (12, 7, 4, ("3", "4", "1")), (6, 5, None, ("5", "6", "0"))],
)
def test_a_world_sets_what_torchrun_would_tell_its_rank(
    clean_env: None, size: int, rank: int, local: int | None, expected_local: tuple[str, str, str]
) -> None:
    local_rank, local_size, node = expected_local
    with FakeWorld(size, rank=rank, local_world_size=local):
        assert torchrun_env() == {
            "RANK": str(rank), "WORLD_SIZE": str(size), "LOCAL_RANK": local_rank, "LOCAL_WORLD_SIZE": local_size,
            "GROUP_RANK": node, "ROLE_RANK": str(rank), "ROLE_NAME": "default", "ROLE_WORLD_SIZE": str(size),
            "GROUP_WORLD_SIZE": str(size // int(local_size)), "TORCHELASTIC_RUN_ID": "none",
            "TORCHELASTIC_RESTART_COUNT": "0", "TORCHELASTIC_MAX_RESTARTS": "0",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500",
        }
        assert int(os.environ["LOCAL_RANK"]) == rank % int(os.environ["LOCAL_WORLD_SIZE"])
        assert dist.is_torchelastic_launched()
    assert set(torchrun_env().values()) == {None}


def test_the_environment_is_put_back_exactly_also_after_a_failing_body(clean_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "users-own")
    with pytest.raises(ZeroDivisionError):
        with FakeWorld(8, rank=2):
            assert os.environ["RANK"] == "2"
            1 / 0
    assert os.environ["RANK"] == "users-own"
    assert "WORLD_SIZE" not in os.environ and "LOCAL_RANK" not in os.environ


def test_a_world_that_fails_to_start_leaves_the_environment(clean_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_fakepg import world as world_module

    def broken(self: Any) -> None:
        raise RuntimeError("no groups today")

    with monkeypatch.context() as m:
        m.setattr(world_module.FakeWorld, "_bring_up_groups", broken)
        with pytest.raises(RuntimeError, match="no groups today"):
            FakeWorld(4, rank=1).start()
    assert set(torchrun_env().values()) == {None}


def test_env_false_leaves_the_environment_alone(clean_env: None) -> None:
    with FakeWorld(4, rank=1, env=False):
        assert set(torchrun_env().values()) == {None}


@pytest.mark.parametrize("local", [0, 3, "8"])
def test_bad_local_world_size_is_refused(local: Any) -> None:
    with pytest.raises(ValueError, match=f"local_world_size must be an int >= 1 that divides world_size=8 .*got {local!r}"):
        FakeWorld(8, local_world_size=local)


def test_each_rank_of_an_exact_world_reads_its_own_variables(clean_env: None) -> None:
    with ExactWorld(4, local_world_size=2) as world:
        def program() -> tuple[str, str, str]:
            before = os.environ["RANK"]
            dist.all_reduce(torch.ones(1))  # the other ranks run here
            return before, os.environ["RANK"], os.environ["LOCAL_RANK"]

        assert world.run(program) == [("0", "0", "0"), ("1", "1", "1"), ("2", "2", "0"), ("3", "3", "1")]
        assert "RANK" not in os.environ and os.environ["WORLD_SIZE"] == "4"  # outside the ranks: the world's only
    assert set(torchrun_env().values()) == {None}


def test_the_marker_sets_the_environment_and_the_ini_option_turns_it_off(run_tests: RunTests, pytester: pytest.Pytester) -> None:
    source = """
import os

@pytest.mark.fake_world([2, 16], rank=-1)
def test_env(world_size, rank):
    assert (os.environ.get("RANK"), os.environ.get("WORLD_SIZE")) == EXPECTED

@pytest.mark.fake_world(4, env=False)
def test_off():
    assert "RANK" not in os.environ
"""
    run_tests(source.replace("EXPECTED", "(str(rank), str(world_size))")).assert_outcomes(passed=3)
    pytester.makeini("[pytest]\nfake_world_env = false\n")
    run_tests(source.replace("EXPECTED", "(None, None)")).assert_outcomes(passed=3)


# -- threads a rank starts ----------------------------------------------------------


def test_threads_of_a_one_rank_world_act_as_its_rank() -> None:
    with FakeWorld(8, rank=5, mesh={"dp": 2, "tp": 4}) as world:
        def task() -> tuple[int, list[float], str]:
            t = torch.ones(2)
            dist.all_reduce(t, group=world.mesh["tp"].get_group())
            return dist.get_rank(), t.tolist(), os.environ["RANK"]

        with ThreadPoolExecutor(2) as pool:
            assert pool.submit(task).result() == (5, [4.0, 4.0], "5")
        assert world.collectives.ops == ["all_reduce"]


def test_a_thread_pool_in_an_exact_rank_issues_that_ranks_collectives() -> None:
    with ExactWorld(4, mesh={"dp": 2, "tp": 2}) as world:
        def program() -> tuple[Any, ...]:
            def task() -> tuple[Any, ...]:
                me = dist.get_rank()
                t = torch.full((2,), float(me))
                dist.all_reduce(t)  # exact: every rank's value
                tp = funcol.all_reduce(torch.full((1,), float(me)), "sum", world.mesh["tp"])
                return me, world.rank, os.environ["RANK"], t.tolist(), tp.tolist()

            with ThreadPoolExecutor(2) as pool:
                return pool.submit(task).result()

        assert world.run(program) == [
            (0, 0, "0", [6.0, 6.0], [1.0]), (1, 1, "1", [6.0, 6.0], [1.0]),
            (2, 2, "2", [6.0, 6.0], [5.0]), (3, 3, "3", [6.0, 6.0], [5.0]),
        ]


def test_a_thread_started_by_a_ranks_thread_resolves_its_groups_and_starts_more() -> None:
    with ExactWorld(2) as world:
        def program() -> list[Any]:
            seen: list[Any] = []

            def grandchild() -> None:
                seen.append(("grandchild", dist.get_rank(), world.pg.group_name == dist.group.WORLD.group_name))

            def child() -> None:
                pg = dist.new_group([0, 1])  # made in the thread: the rank's
                seen.append(("child", dist.get_rank(), dist.get_world_size(pg)))
                inner = threading.Thread(target=grandchild)
                inner.start()
                inner.join()

            thread = threading.Thread(target=child)
            thread.start()
            thread.join()
            seen.append(("rank", traces()["groups"]["pg_map"]))  # the child's group is the rank's
            return seen

        assert world.run(program) == [
            [("child", r, 2), ("grandchild", r, True), ("rank", 2)] for r in range(2)
        ]


def test_threads_started_outside_the_ranks_are_left_alone() -> None:
    with ExactWorld(2):
        found: list[bool] = []
        thread = threading.Thread(target=lambda: found.append(dist.is_initialized()))
        thread.start()
        thread.join()
        assert found == [False]
    assert threading.Thread.start.__module__ == "threading"


@pytest.mark.parametrize(
    ("size", "device", "gpus", "expected"),
    [(16, "cpu", 0, 8), (6, "cpu", 0, 6), (16, "cuda", 1, 1), (1024, "cuda", 8, 8), (12, "cuda", 8, 6), (4, "cuda", 8, 4)],
)
def test_ranks_per_node_default_to_this_machines_gpus_on_cuda(
    monkeypatch: pytest.MonkeyPatch, size: int, device: str, gpus: int, expected: int
) -> None:
    """On device="cuda" LOCAL_RANK is a device index (DeviceMesh calls
    torch.cuda.set_device(LOCAL_RANK)): it must name a GPU this machine has."""
    from pytest_fakepg.environment import ranks_per_node

    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    assert ranks_per_node(size, device) == expected
