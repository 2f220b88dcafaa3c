"""pytest-fakepg's pytest adapter: options, the fake_world marker, hooks and
fixtures.

Thin on purpose, as pytest-xdist's plugin.py: marker arguments become cases
in collection.py, a test's world comes and goes in worlds.py, exact worlds
call the test as every rank's program in exact.py, rank sweeps are carried
and checked in sweeps.py and the collectives report is report.py; state
shared between hooks lives in stash keys (state.py). Nothing here touches
torch, and torch is not imported when pytest loads this plugin.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import pytest

from .. import spec as _spec
from . import collection, exact, real, sweeps, worlds
from .state import CASE, REAL_REPORT, REPORT, SETTINGS, WORLD, Settings

if TYPE_CHECKING:
    from torch.distributed import Store
    from torch.distributed.device_mesh import DeviceMesh

    from ..memory import Memory
    from ..records import CollectiveLog
    from ..world import FakeWorld

# The tests being run, innermost last (pytester runs sessions inside a test):
# how this plugin's fixtures find their test without taking `request`, which
# pytest 9 wraps in a new FixtureDef, inspecting a signature, each time a
# fixture asks for it. Not a stash: a fixture without `request` has no
# config to find one in.
RUNNING: list[pytest.Item] = []


# -- options and configuration -------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fakepg", "fake distributed worlds (pytest-fakepg)")
    group.addoption(
        "--fake-world-backend",
        dest="fake_world_backend",
        default=None,
        help="c10d backend for every fake world: 'fakepg' (default, ours) or "
        "'fake' (torch's stock backend, for parity).",
    )
    group.addoption(
        "--fake-world-ranks",
        dest="fake_world_ranks",
        default=None,
        help="'all' runs every marked test that names no rank once per rank of each world size.",
    )
    group.addoption(
        "--fake-world-report",
        dest="fake_world_report",
        action="store_true",
        default=None,
        help="print the collectives each fake-world test ran, by group and op, with totals.",
    )
    group.addoption(
        "--fake-world-report-totals",
        dest="fake_world_report_totals",
        action="store_true",
        default=None,
        help="print only the collectives report's totals: by op and by group label, for the whole run.",
    )
    group.addoption(
        "--fake-world-report-json",
        dest="fake_world_report_json",
        default=None,
        metavar="PATH",
        help="write the collectives report as JSON to PATH.",
    )
    group.addoption(
        "--fake-world-strict",
        dest="fake_world_strict",
        action="store_true",
        default=None,
        help="make a process group left behind by a test, or an armed fault that never "
        "fired, an error instead of a warning.",
    )
    group.addoption(
        "--fake-world-trace-dir",
        dest="fake_world_trace_dir",
        default=None,
        metavar="DIR",
        help="write each rank sweep's collectives as Flight Recorder dumps, one folder per "
        "test under DIR, for python -m torch.distributed.flight_recorder.fr_trace.",
    )
    group.addoption(
        "--fake-world-real",
        dest="fake_world_real",
        default=None,
        metavar="BACKEND",
        help="also run each fake-world test that can on real ranks: 'gloo' (CPU worlds) or 'nccl' "
        "(CUDA worlds) starts them on this machine with torchrun; 'env' runs as the rank torchrun "
        "gives this process. The ledgers of real and fake ranks are compared.",
    )
    group.addoption(
        "--fake-world-real-timeout",
        dest="fake_world_real_timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="how long a real run may take before its ranks are stopped and the test fails (default 300).",
    )
    parser.addini("fake_world_size", "world size of a fake world that names none (default 2)", default="2")
    parser.addini("fake_world_backend", "default c10d backend: fakepg or fake", default="fakepg")
    parser.addini("fake_world_ranks", "'all' to sweep every rank of marked tests", default="")
    parser.addini("fake_world_report", "print the collectives report", type="bool", default=False)
    parser.addini("fake_world_report_totals", "print only the collectives report's totals", type="bool",
                  default=False)
    parser.addini("fake_world_strict", "leaks and faults that never fire are errors", type="bool", default=False)
    parser.addini(
        "fake_world_env", "set torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, ...) in every world",
        type="bool", default=True,
    )
    parser.addini(
        "fake_world_check_ranks", "check that the ranks of a sweep issue the same collectives",
        type="bool", default=True,
    )


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from . import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


def _option(config: pytest.Config, name: str) -> Any:
    value = config.getoption(name)
    return config.getini(name) if value is None else value


def _writable_file(option: str, path: str | None) -> str | None:
    if path is None:
        return None
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise pytest.UsageError(f"{option}={path}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise pytest.UsageError(f"{option}={path}: the folder {parent} is not writable")
    return path


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", collection.MARKER_HELP)
    backend = _option(config, "fake_world_backend")
    if backend not in _spec.BACKENDS:
        raise pytest.UsageError(
            f"--fake-world-backend must be one of {', '.join(_spec.BACKENDS)}; got {backend!r}"
        )
    ranks = _option(config, "fake_world_ranks")
    if ranks not in ("", _spec.RANK_SWEEP):
        raise pytest.UsageError(f"--fake-world-ranks must be 'all' (or unset); got {ranks!r}")
    raw_size = config.getini("fake_world_size")
    try:
        size = _spec.check_world_size(int(raw_size))
    except (TypeError, ValueError):
        raise pytest.UsageError(f"fake_world_size must be an int >= 1; got {raw_size!r}") from None
    trace_dir = config.getoption("fake_world_trace_dir")
    if trace_dir is not None and os.path.exists(trace_dir) and not os.path.isdir(trace_dir):
        raise pytest.UsageError(f"--fake-world-trace-dir={trace_dir}: that is a file, not a folder")
    real_mode = config.getoption("fake_world_real")
    real.check_mode(real_mode)
    real_timeout = config.getoption("fake_world_real_timeout")
    if not real_timeout > 0:
        raise pytest.UsageError(f"--fake-world-real-timeout must be a number of seconds > 0; got {real_timeout!r}")
    # A rank of a real run reports only on rank 0, and never when a launcher reads its result.
    quiet_rank = real_mode == "env" and (real.this_rank()[0] != 0 or real.launched())
    config.stash[SETTINGS] = Settings(
        backend=backend,
        all_ranks=ranks == _spec.RANK_SWEEP,
        world_size=size,
        report=not quiet_rank and bool(_option(config, "fake_world_report")
                                       or _option(config, "fake_world_report_totals")),
        report_totals=bool(_option(config, "fake_world_report_totals")),
        report_json=None if quiet_rank else _writable_file("--fake-world-report-json",
                                                            config.getoption("fake_world_report_json")),
        strict=bool(_option(config, "fake_world_strict")),
        check_ranks=bool(config.getini("fake_world_check_ranks")),
        trace_dir=trace_dir,
        env=bool(config.getini("fake_world_env")),
        real=real_mode,
        real_timeout=real_timeout,
    )
    config.stash[REPORT] = {}
    config.stash[REAL_REPORT] = {}
    if real_mode is not None:
        config.pluginmanager.register(real.Rank(config) if real_mode == "env" else real.Launcher(config),
                                      "fakepg-real")
    if not hasattr(config, "workerinput"):  # xdist workers send their reports on
        config.pluginmanager.register(sweeps.Gatherer(config), "fakepg-gatherer")


# -- collection -------------------------------------------------------------------


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    collection.generate(metafunc)


@pytest.hookimpl(trylast=True)
def pytest_fake_world_make_id(spec: _spec.WorldSpec) -> str:
    return _spec.case_id(spec)


@pytest.hookimpl(trylast=True)  # after deselection (-k, -m): count what runs
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Note which items get a world, once, so the per-test hooks below cost
    unmarked tests one stash lookup; carry data between processes only in
    runs that need it."""
    swept = collection.note_items(config, items)
    settings = config.stash[SETTINGS]
    if settings.real is not None:
        real.note(config, items)
        swept = swept and settings.real != "env"  # a rank of a real run checks its ledger, not a sweep
    reporting = settings.report or settings.report_json
    if (swept or reporting) and not config.pluginmanager.has_plugin("fakepg-carrier"):
        config.pluginmanager.register(sweeps.Carrier(), "fakepg-carrier")
    # Without pytest-xdist (whose workers each run part of a sweep), a
    # divergence is put on the deviating rank's case.
    if swept and not hasattr(config, "workerinput") and not config.pluginmanager.has_plugin("fakepg-holder"):
        config.pluginmanager.register(sweeps.Holder(), "fakepg-holder")


# -- bringing worlds up and down -------------------------------------------------


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """A marked test's world comes up before any fixture, so fixtures and the
    test body alike can call torch.distributed. Every test is noted as
    running, for this plugin's fixtures."""
    RUNNING.append(item)
    case = item.stash.get(CASE, None)
    if case is not None:
        worlds.bring_up(item, case)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """An exact world runs the test function as every rank's program. Memory
    is measured from the start of the test body."""
    __tracebackhide__ = True
    world = pyfuncitem.stash.get(WORLD, None)
    if world is None:
        return None
    memory = world.measured_memory()
    if memory is not None:
        memory.reset()
    if not world.exact:
        return None
    exact.call(pyfuncitem, world)
    return True


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    """A failure of a test's fake world is shown at the test's own line
    (torch's frames, such as all_reduce's body and docstring, left out), and
    its one-line summary leads with the cause."""
    failed = call.excinfo is not None and CASE in item.stash
    if failed:
        worlds.show_at_user_code(call.excinfo)
    report = yield
    if failed and report.failed:
        worlds.lead_with_cause(report, call.excinfo)
    return report


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    """After the test's fixtures are torn down: the world goes down, and a
    process group the test made itself is destroyed and reported."""
    try:
        return (yield)
    finally:
        if item in RUNNING:
            RUNNING.remove(item)
        world = item.stash.get(WORLD, None)
        if world is not None:
            worlds.take_down(item, world)
        worlds.check_leaks(item)


# -- the collectives report ----------------------------------------------------------


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    settings = config.stash.get(SETTINGS, None)
    if settings is None:
        return
    from . import report

    if settings.report:
        report.render(terminalreporter, config.stash[REPORT], totals_only=settings.report_totals)
    if settings.real in ("gloo", "nccl"):
        report.render_real(terminalreporter, config.stash[REAL_REPORT], settings.real)


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    settings = config.stash.get(SETTINGS, None)
    if settings is None or not settings.report_json or hasattr(config, "workerinput"):
        return
    from . import report

    report.write_json(settings.report_json, config.stash[REPORT], config.stash[REAL_REPORT])


# -- fixtures ------------------------------------------------------------------


def _test_world() -> FakeWorld:
    """The running test's FakeWorld, brought up now if it is not up yet (see
    the fake_world fixture)."""
    if not RUNNING:
        raise RuntimeError("pytest-fakepg's fixtures give a running test its fake world; no test is running")
    item = RUNNING[-1]
    world = item.stash.get(WORLD, None)
    if world is None:
        # Goes down in pytest_runtest_teardown, after every fixture.
        world = worlds.bring_up(item, collection.single_case(item, None))
    return world


@pytest.fixture
def fake_world() -> FakeWorld:
    """The test's FakeWorld. Without the fake_world marker, a default world:
    world size from the fake_world_size ini option (2) or the test's own
    world_size parameter, rank 0 or the test's rank parameter."""
    return _test_world()


@pytest.fixture
def rank() -> int:
    """This process's rank in the fake world; in an exact world, each rank's
    test body gets its own."""
    return exact.fixture_value(_test_world(), "rank")  # type: ignore[no-any-return]


@pytest.fixture
def world_size() -> int:
    """The fake world's size."""
    return _test_world().world_size


@pytest.fixture
def device_mesh() -> DeviceMesh:
    """The world's DeviceMesh: the one asked for with mesh=..., else a 1-D
    mesh over every rank. In an exact world, each rank's test body gets its own."""
    return exact.fixture_value(_test_world(), "device_mesh")  # type: ignore[no-any-return]


@pytest.fixture
def fake_store() -> Store:
    """The store behind the fake world's process groups."""
    return _test_world().store


@pytest.fixture
def collectives() -> CollectiveLog:
    """The log of collectives the test ran (a CollectiveLog); in an exact
    world, each rank's test body gets the log of what that rank issued."""
    return exact.fixture_value(_test_world(), "collectives")  # type: ignore[no-any-return]


@pytest.fixture
def memory() -> Memory:
    """This rank's tensor memory from the start of the test body: ``peak``
    (bytes), ``at_peak`` and ``current`` (bytes by category: parameters,
    gradients, optimizer, activations, other). Real or fake tensors; in an
    exact world on fake tensors, each rank's test body gets its own."""
    world = _test_world()
    if world.exact and world.spec.tensors != "fake":
        from ..exact.world import MEMORY_OF_REAL_RANKS

        pytest.fail(MEMORY_OF_REAL_RANKS, pytrace=False)
    return exact.fixture_value(world, "memory")  # type: ignore[no-any-return]
