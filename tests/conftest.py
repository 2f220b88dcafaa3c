from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from pytest_fakepg import FakeWorld

HEADER = "import pytest, torch, torch.distributed as dist\n"
RunTests = Callable[..., pytest.RunResult]

# Rank 5 of a world of 8 laid out as {"dp": 2, "tp": 4}:
#   [[0, 1, 2, 3],
#    [4, 5, 6, 7]]
# so its "tp" group is ranks 4..7, where it is group rank 1.
WORLD_SIZE = 8
RANK = 5
MESH = {"dp": 2, "tp": 4}

# An exact world of four, for the test_exact*.py files.
exact = pytest.mark.fake_world(4, values="exact")
# The parity tests also run on a GPU, where there is one (.ci/gpu).
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device; none is available"))]


@dataclass
class Group:
    """A group under test, with what a real world would make of it."""

    world: FakeWorld
    pg: Any  # None for the default group
    size: int
    rank: int  # this rank's rank in the group
    ranks: Sequence[int]  # global ranks
    values: str
    name: str

    def global_rank(self, group_rank: int) -> int:
        return self.ranks[group_rank]


@pytest.fixture(params=["uniform", "copy"])
def values(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(params=["default", "tp"])
def group(request: pytest.FixtureRequest, values: str) -> Iterator[Group]:
    """Every collective test runs on the default group and on a DeviceMesh
    sub-group, under both value semantics."""
    with FakeWorld(WORLD_SIZE, rank=RANK, mesh=MESH, values=values) as world:
        if request.param == "default":
            yield Group(world, None, WORLD_SIZE, RANK, range(WORLD_SIZE), values, "default")
        else:
            pg = world.mesh["tp"].get_group()
            yield Group(world, pg, 4, 1, (4, 5, 6, 7), values, "tp")


def arange(*shape: int, dtype: torch.dtype = torch.float32, device: str = "cpu") -> torch.Tensor:
    """1, 2, 3, ... in `shape`: values that show which element went where."""
    n = 1
    for s in shape:
        n *= s
    return torch.arange(1, n + 1, dtype=dtype, device=device).reshape(shape)


@pytest.fixture
def pristine() -> dict[str, Any]:
    """What a world could leave in this process (``_compat.state.traces``),
    before the test: no world is up."""
    from pytest_fakepg._compat.state import traces

    state = traces()
    assert not state.get("default group") and not state["patches installed"]
    return state


@pytest.fixture(autouse=True)
def _autoload_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    # pytester's subprocesses use installed plugins (xdist, randomly, timeout)
    # even when this suite runs with PYTEST_DISABLE_PLUGIN_AUTOLOAD (.ci/gpu).
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)


@pytest.fixture
def run_tests(pytester: pytest.Pytester) -> RunTests:
    """Write `source` (after `header`) as test_it.py and run pytest on it in a
    subprocess: torch's distributed state is per process."""

    def run(source: str, *args: str, header: str = HEADER, timeout: float | None = None) -> pytest.RunResult:
        pytester.makepyfile(test_it=header + source)
        return pytester.runpytest_subprocess("-p", "no:randomly", "-W", "ignore::FutureWarning", *args, timeout=timeout)

    return run


def pytest_configure(config: pytest.Config) -> None:
    # pytester points HOME at a temporary directory; keep the subprocess runs
    # on this run's compiled-backend cache instead of rebuilding it in each.
    import os

    from pytest_fakepg import _backend

    os.environ.setdefault(_backend.CACHE_ENV, str(_backend.build_dir().parent.parent))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--slow",
        action="store_true",
        help="also run the slow packaging and cold-build checks (marked slow; .ci/run does)",
    )
    parser.addoption(
        "--soak-tests",
        type=int,
        default=300,
        help="tests in the generated soak suite (CI: 300; the full soak: 10000)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="a slow packaging or cold-build check: run with --slow (CI does)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def planning_state(propagator: Any) -> dict[str, Any]:
    """DTensor's sharding propagator as a world must leave it: its
    attributes, a per-thread cache by its kind and the function it caches
    (a world replaces it with a new one to drop every thread's entries:
    NOTE [Meshes of different worlds])."""
    import threading

    return {name: (type(value), value.cache.__wrapped__) if isinstance(value, threading.local) else value
            for name, value in vars(propagator).items()}
