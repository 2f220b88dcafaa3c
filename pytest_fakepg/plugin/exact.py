"""Exact worlds under pytest: a test function is every rank's program, each
rank's body getting its own rank, device_mesh and collectives; fixtures run
once, outside every rank."""

from __future__ import annotations

import unittest
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

from .. import _compat
from .state import MARKER

if TYPE_CHECKING:
    from ..world import FakeWorld

# Fixtures whose value differs per rank in an exact world, and how a world
# gives each: the test body gets each rank's own (call); a fixture cannot
# take them.
PER_RANK: dict[str, Callable[[FakeWorld], Any]] = {
    "rank": lambda world: world.rank,
    "device_mesh": lambda world: world.device_mesh(),
    "collectives": lambda world: world.collectives,
    "memory": lambda world: world.memory,
}


def fixture_value(world: FakeWorld, name: str) -> Any:
    """What per-rank fixture ``name`` holds: the world's value, or in an
    exact world (outside any rank) a stand-in that says where each rank's is."""
    return PerRank(name) if world.exact else PER_RANK[name](world)


class PerRank:
    """What a per-rank fixture holds in an exact world outside any rank."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}: one per rank, given to the test body of an exact world>"


def is_testcase(item: pytest.Item) -> bool:
    """Whether ``item`` is a unittest.TestCase method."""
    cls = getattr(item, "cls", None)
    return cls is not None and issubclass(cls, unittest.TestCase)


def check_item(item: pytest.Item) -> None:
    """An exact world runs the test function once per rank; fixtures run once,
    outside every rank, so none may take a per-rank fixture (the plugin's
    own, defined in this package's __init__, know what they give). A
    unittest.TestCase method takes no fixtures; its class must not be one of
    torch's harness classes, which start processes of their own."""
    if not isinstance(item, pytest.Function):
        pytest.fail(
            f"values='exact' runs a test function once per rank; {item.name} is not a test function "
            f"[invalid @pytest.mark.{MARKER}(...)]",
            pytrace=False,
        )
    if is_testcase(item):
        from ..exact import testcase

        if testcase.is_torch_harness(item.cls):  # type: ignore[arg-type]
            pytest.fail(testcase.harness_error(item.cls), pytrace=False)  # type: ignore[arg-type]
        return
    for name, defs in _compat.pytest_api.fixture_definitions(item).items():
        fixture = defs[-1]
        if getattr(fixture.func, "__module__", None) == __package__:
            continue
        taken = [a for a in fixture.argnames if a in PER_RANK]
        if taken:
            pytest.fail(
                f"fixture {name!r} takes {taken[0]!r}, which differs per rank in an exact world "
                "(values='exact'): fixtures run once, outside every rank, and only the test "
                f"body runs per rank. Take {taken[0]!r} in the test function instead.",
                pytrace=False,
            )


def call(item: pytest.Function, world: FakeWorld) -> None:
    """Run the test function as every rank's program of ``world``."""
    __tracebackhide__ = True
    funcargs = item.funcargs
    names = _compat.pytest_api.argnames(item)
    per_rank = [n for n in names if n in PER_RANK]

    def program() -> None:
        __tracebackhide__ = True
        kwargs: dict[str, Any] = {n: funcargs[n] for n in names}
        for n in per_rank:
            kwargs[n] = PER_RANK[n](world)
        item.obj(**kwargs)

    world.run(program)


def call_testcase(item: pytest.Function, world: FakeWorld) -> None:
    """Run a unittest.TestCase method as every rank's program of ``world``:
    each rank runs setUp, the method and tearDown on its own instance
    (``testcase.run_test_method``); the outcome is pytest's."""
    __tracebackhide__ = True
    from ..exact import testcase

    try:
        testcase.run_test_method(world, item.cls, item.name)  # type: ignore[arg-type]
    except unittest.SkipTest as exc:
        raise pytest.skip.Exception(str(exc), _use_item_location=True) from None
    except testcase.ExpectedFailure as exc:
        raise pytest.xfail.Exception(str(exc)) from None
