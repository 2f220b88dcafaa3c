"""The world's store: in a uniform world a wait for a key no rank will set
fails at once (NOTE [A store wait in a uniform world]); in an exact world a
wait is a turn (NOTE [Store waits are turns]) and one no rank can answer
times out in its rank, which may catch it (NOTE [A store wait times out]);
every wait the plugin makes can be ended by pytest-timeout."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.distributed as dist

from pytest_fakepg import ExactWorld, FakeWorld

from .conftest import RunTests

# -- uniform worlds: a wait no rank can answer fails at once ----------------------------


@pytest.mark.parametrize(
    ("call", "shown"),
    [
        (lambda store: store.get("ready"), "store get('ready')"),
        (lambda store: store.wait(["ready", "set"]), "store wait(['ready', 'set'])"),
        (lambda store: store.multi_get(["set", "ready"]), "store multi_get(['set', 'ready'])"),
    ],
    ids=["get", "wait", "multi_get"],
)
@pytest.mark.parametrize("values", ["uniform", "copy"])
def test_a_uniform_world_fails_a_wait_for_a_key_no_rank_sets(
    values: str, call: Callable[[Any], Any], shown: str
) -> None:
    with FakeWorld(4, rank=1, values=values) as world:
        world.store.set("set", "yes")
        with pytest.raises(dist.DistStoreError) as info:
            call(world.store)
        assert world.store.get("set") == b"yes"  # a key that is set is there at once
    message = str(info.value)
    assert message.startswith(f"{shown} at test_store.py:")
    assert f"waits for 'ready', which no rank will set: in a {values} world only rank 1 of 4 runs" in message
    assert message.endswith("Set the key in the test before waiting for it, or use values='exact' to run every rank")


def test_the_default_groups_store_fails_the_same_way() -> None:
    with FakeWorld(2), pytest.raises(dist.DistStoreError, match=r"store get\('\d+//from-rank-1'\) at test_store.py:"):
        dist.distributed_c10d._get_default_store().get("from-rank-1")


# -- exact worlds: turns, and a wait no rank answers times out in its rank -------------------


def test_a_store_handshake_passes_between_ranks(run_tests: RunTests) -> None:
    """NOTE [Store waits are turns]: rank 0 waits for a key rank 1 sets
    later, valid on any cluster, through the fixture's store and through the
    store behind the default group (torch's own path, via PrefixStore)."""
    result = run_tests(
        """
        @pytest.mark.fake_world(3, values="exact")
        def test_it(rank, fake_store):
            if rank == 0:
                assert fake_store.get("ready") == b"yes"
                fake_store.wait(["later"])
                assert fake_store.multi_get(["ready", "later"]) == [b"yes", b"too"]
            elif rank == 1:
                fake_store.set("ready", "yes")
            else:
                fake_store.set("later", "too")
            store = dist.distributed_c10d._get_default_store()  # the default group's
            if rank == 2:
                assert store.get(f"from-{0}") == b"0"
            if rank == 0:
                store.set("from-0", "0")
        """.replace("\n        ", "\n"),
        "-p", "timeout", "--timeout", "60",
    )
    result.assert_outcomes(passed=1)


def test_a_store_wait_no_rank_answers_times_out_naming_the_key_and_the_other_ranks() -> None:
    def program() -> None:
        if dist.get_rank() == 0:
            world.store.get("never")
        else:
            dist.barrier()

    with ExactWorld(2) as world, pytest.raises(dist.DistStoreError) as info:
        world.run(program)
    lines = str(info.value).splitlines()
    assert lines[0].startswith("store get('never') at test_store.py:")
    assert lines[0].endswith(
        " in rank 0 timed out: no rank set 'never', and no other rank could run (an exact world times "
        "such a wait out at once; a cluster, after the store's timeout)"
    )
    assert lines[1].startswith("  rank 1 waits in barrier on group default_pg at test_store.py:")
    with ExactWorld(2) as world:  # and the world after it is sound
        assert world.run(lambda: world.store.add("n", 1)) == [1, 2]


def test_a_rank_that_catches_the_timeout_carries_on() -> None:
    """The common fallback: try a key, carry on without it. The wait that
    began first times out first, as with equal timeouts on a cluster."""

    def program() -> str:
        store = world.store
        if dist.get_rank() == 1:
            store.set("started", "1")
            try:
                store.get("optional")
            except dist.DistStoreError:
                store.set("done", "without it")
        else:
            store.wait(["started"])
            store.wait(["done"])
        t = torch.ones(1)
        dist.all_reduce(t)
        return f"{store.get('done').decode()} {t.item():g}"

    with ExactWorld(3) as world:
        assert world.run(program) == ["without it 3"] * 3


def test_only_calls_deadlock_when_no_rank_waits_on_the_store() -> None:
    from pytest_fakepg import FakeWorldDeadlock

    def program() -> None:
        if dist.get_rank() == 0:
            dist.barrier()

    with ExactWorld(2) as world, pytest.raises(FakeWorldDeadlock, match="no rank can run"):
        world.run(program)


# -- every wait can be ended -------------------------------------------------------------------


def test_pytest_timeout_ends_a_wait_outside_the_ranks(run_tests: RunTests) -> None:
    """A fixture of an exact world waits outside the ranks, for the store's
    timeout: in Python, so pytest-timeout's signal ends it (the run would
    otherwise take the store's 300 s, past pytester's limit)."""
    result = run_tests(
        """
        @pytest.fixture
        def waits(fake_store):
            fake_store.wait(["never"])

        @pytest.mark.timeout(2)
        @pytest.mark.fake_world(2, values="exact")
        def test_it(waits):
            pass
        """.replace("\n        ", "\n"),
        "-p", "timeout", "--timeout-method=signal",
        timeout=120,
    )
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*Failed: Timeout (>2.0s) from pytest-timeout*"])


def test_a_wait_outside_the_ranks_times_out_with_the_stores_error() -> None:
    from datetime import timedelta

    with ExactWorld(2) as world:
        with pytest.raises(dist.DistStoreError, match=r"store wait\(\['never'\]\) timed out after 0.1 s"):
            world.store.wait(["never"], timedelta(seconds=0.1))
        world.store.set("now", "1")
        world.store.wait(["now"], timedelta(seconds=0.1))
