"""pytest-fakepg's pytest adapter: options, the fake_world marker, hooks and
fixtures.

Thin on purpose: marker arguments become WorldSpecs (spec.py), worlds come
and go through FakeWorld (world.py), the report is report.py and the check
across ranks consistency.py, both imported only when used. Nothing here
touches torch, and torch is not imported when pytest loads this plugin.
"""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Generator
from typing import TYPE_CHECKING, Any, NamedTuple

import pytest

from . import spec as _spec
from .world import FakeWorldFaultWarning, FakeWorldLeakWarning, clean_up_foreign_state, device_available

if TYPE_CHECKING:
    from torch.distributed import Store
    from torch.distributed.device_mesh import DeviceMesh

    from .records import CollectiveLog
    from .world import FakeWorld

MARKER = "fake_world"
# The marker takes a world's arguments (WorldSpec.build's) and check_ranks.
_MARKER_SIGNATURE = _spec.SIGNATURE.replace(
    parameters=[
        *_spec.SIGNATURE.parameters.values(),
        inspect.Parameter("check_ranks", inspect.Parameter.KEYWORD_ONLY, default=None, annotation="bool | None"),
    ]
)
_MARKER_HELP = (
    MARKER
    + str(
        _MARKER_SIGNATURE.replace(
            parameters=[p.replace(annotation=p.empty) for p in _MARKER_SIGNATURE.parameters.values()],
            return_annotation=_MARKER_SIGNATURE.empty,
        )
    )
    + ": run the test in a fake torch.distributed world (process group, store "
    "and optional DeviceMesh) for each world size, mesh and rank given; "
    "rank='all' sweeps every rank, and the ranks of a sweep are checked to "
    "issue the same collectives unless check_ranks=False. See pytest-fakepg's README."
)


class _Settings(NamedTuple):
    backend: str
    all_ranks: bool
    world_size: int
    report: bool
    report_json: str | None
    strict: bool
    check_ranks: bool
    trace_dir: str | None


class _Case(NamedTuple):
    """One generated test case: the world it gets, or why it cannot have one."""

    spec: _spec.WorldSpec | None
    error: str | None = None
    check_ranks: bool | None = None  # the marker's, None for the ini default
    id: str = ""


_SETTINGS = pytest.StashKey[_Settings]()
_REPORT = pytest.StashKey[dict[str, dict[str, Any]]]()
_WORLD = pytest.StashKey["FakeWorld"]()
_CASE_PARAM = "_fake_world_case"
_CASE = pytest.StashKey[_Case]()
# An item's place in a sweep whose traces are gathered: (key, cases, check).
_SWEEP = pytest.StashKey[tuple[str, int, bool]]()
_REPORT_ENTRY = pytest.StashKey[dict[str, Any]]()
# The tests being run, innermost last (pytester runs sessions inside a test):
# how this plugin's fixtures find their test without taking `request`, which
# pytest 9 wraps in a new FixtureDef, inspecting a signature, each time a
# fixture asks for it.
_RUNNING: list[pytest.Item] = []


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
    parser.addini("fake_world_size", "world size of a fake world that names none (default 2)", default="2")
    parser.addini("fake_world_backend", "default c10d backend: fakepg or fake", default="fakepg")
    parser.addini("fake_world_ranks", "'all' to sweep every rank of marked tests", default="")
    parser.addini("fake_world_report", "print the collectives report", type="bool", default=False)
    parser.addini("fake_world_strict", "leaks and faults that never fire are errors", type="bool", default=False)
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
    config.addinivalue_line("markers", _MARKER_HELP)
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
    config.stash[_SETTINGS] = _Settings(
        backend=backend,
        all_ranks=ranks == _spec.RANK_SWEEP,
        world_size=size,
        report=bool(_option(config, "fake_world_report")),
        report_json=_writable_file("--fake-world-report-json", config.getoption("fake_world_report_json")),
        strict=bool(_option(config, "fake_world_strict")),
        check_ranks=bool(config.getini("fake_world_check_ranks")),
        trace_dir=trace_dir,
    )
    config.stash[_REPORT] = {}
    if not hasattr(config, "workerinput"):  # xdist workers send their reports on
        config.pluginmanager.register(_Gatherer(config), "fakepg-gatherer")


# -- parametrization -------------------------------------------------------------


def _marker_args(marker: pytest.Mark) -> tuple[dict[str, Any], bool | None]:
    """The marker's world arguments, bound, and its check_ranks."""
    args = _spec.bind(marker.args, marker.kwargs, _MARKER_SIGNATURE)
    check = args.pop("check_ranks")
    if check is not None and not isinstance(check, bool):
        raise TypeError(f"check_ranks must be True or False, got {check!r}")
    return args, check


def _error_text(exc: Exception) -> str:
    # The cause first: pytest's summary line already names the test, and at
    # 80 columns whatever comes after the cause is cut off.
    return f"{exc} [invalid @pytest.mark.{MARKER}(...)]"


def _drives(metafunc: pytest.Metafunc) -> set[str]:
    """world_size/rank given by the test's own @pytest.mark.parametrize."""
    names: set[str] = set()
    for mark in metafunc.definition.iter_markers("parametrize"):
        argnames = mark.args[0] if mark.args else mark.kwargs.get("argnames", ())
        if isinstance(argnames, str):
            argnames = [a.strip() for a in argnames.split(",")]
        names.update(a for a in argnames if a in ("world_size", "rank"))
    return names


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker(MARKER)
    if marker is None or _drives(metafunc):
        return  # worlds built at setup: see _single_case
    settings = metafunc.config.stash[_SETTINGS]
    try:
        args, check = _marker_args(marker)
        specs = _spec.expand(
            args,
            default_world_size=settings.world_size,
            default_backend=settings.backend,
            # a marker that names its ranks keeps them
            all_ranks=settings.all_ranks and "rank" not in marker.kwargs,
        )
    except (TypeError, ValueError) as exc:
        cases = [_Case(None, _error_text(exc), id="invalid-fake-world")]
    else:
        hook = metafunc.config.hook.pytest_fake_world_make_id
        cases = [_Case(s, None, check, hook(spec=s, definition=metafunc.definition)) for s in specs]
    # The cases ride on a parameter the test function does not take: the
    # setup hook reads it from the item's callspec, so no fixture runs for it.
    # parametrize() accepts only names in the fixture closure, hence the append.
    if _CASE_PARAM not in metafunc.fixturenames:
        metafunc.fixturenames.append(_CASE_PARAM)
    metafunc.parametrize(_CASE_PARAM, cases, ids=[c.id for c in cases])


@pytest.hookimpl(trylast=True)
def pytest_fake_world_make_id(spec: _spec.WorldSpec) -> str:
    return _spec.case_id(spec)


def _single_case(item: pytest.Item, marker: pytest.Mark | None) -> _Case:
    """The one world of a test the marker does not parametrize:
    unittest.TestCase methods and tests whose own parametrize gives
    world_size or rank (at collection), and unmarked tests that ask for a
    fake-world fixture (at setup)."""
    settings = item.config.stash[_SETTINGS]
    params = getattr(getattr(item, "callspec", None), "params", {})
    try:
        args, check = _marker_args(marker) if marker is not None else (_spec.bind((), {}), None)
        for name in ("world_size", "rank"):
            if name in params:
                args[name] = params[name]
        sweeps = (
            isinstance(args["world_size"], list)
            or isinstance(args["rank"], (list, str))
            or isinstance(args["mesh"], list)
        )
        if sweeps:
            raise ValueError(
                "this test cannot be parametrized by the marker (it is a "
                "unittest.TestCase method or parametrizes world_size/rank "
                "itself): give one world size, one rank and one mesh"
            )
        specs = _spec.expand(args, default_world_size=settings.world_size, default_backend=settings.backend)
    except (TypeError, ValueError) as exc:
        return _Case(None, _error_text(exc))
    return _Case(specs[0], None, check)


@pytest.hookimpl(trylast=True)  # after deselection (-k, -m): count what runs
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Note which items get a world, once, so the per-test hooks below cost
    unmarked tests one stash lookup; and which cases form a sweep whose ranks
    are compared."""
    settings = config.stash[_SETTINGS]
    # key -> (compare the ranks?, the sweep's cases)
    sweeps: dict[str, tuple[bool, list[pytest.Item]]] = {}
    unswept = []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        case = params.get(_CASE_PARAM)
        if case is None:
            marker = item.get_closest_marker(MARKER)
            if marker is None:
                continue
            case = _single_case(item, marker)
            exact = case.spec is not None and case.spec.values == "exact"  # runs every rank already
            if settings.all_ranks and "rank" not in marker.kwargs and not exact:
                unswept.append(item.nodeid)
        item.stash[_CASE] = case
        spec = case.spec
        wanted = settings.check_ranks if case.check_ranks is None else case.check_ranks
        if spec is not None and case.id and spec.backend == "fakepg" and spec.record and (wanted or settings.trace_dir):
            world = f"w{spec.world_size}-{spec.mesh_id}" if spec.mesh_id else f"w{spec.world_size}"
            key = item.nodeid.replace(case.id, world, 1)
            sweeps.setdefault(key, (wanted, []))[1].append(item)
    swept = False
    for key, (check, members) in sweeps.items():
        if len({m.stash[_CASE].spec.rank for m in members}) > 1:  # type: ignore[union-attr]
            swept = True
            for m in members:
                m.stash[_SWEEP] = (key, len(members), check)
    reporting = settings.report or settings.report_json
    if (swept or reporting) and not config.pluginmanager.has_plugin("fakepg-carrier"):
        config.pluginmanager.register(_Carrier(), "fakepg-carrier")
    if unswept:
        warnings.warn(
            pytest.PytestWarning(
                f"--fake-world-ranks=all cannot sweep {len(unswept)} test(s) that are "
                "unittest.TestCase methods or parametrize world_size/rank themselves; they "
                f"run one rank each: {', '.join(unswept[:5])}{' ...' if len(unswept) > 5 else ''}"
            ),
            stacklevel=1,
        )


# -- bringing worlds up and down -------------------------------------------------


def _bring_up(item: pytest.Item, case: _Case) -> FakeWorld:
    if case.error is not None:
        pytest.fail(case.error, pytrace=False)
    spec = case.spec
    assert spec is not None
    try:
        import torch.distributed  # noqa: F401
    except ImportError as exc:
        pytest.fail(
            f"pytest-fakepg's fake worlds need torch, which could not be imported ({exc}); "
            "install it, e.g. pip install torch",
            pytrace=False,
        )
    from .world import FakeWorld

    if not device_available(spec.device):
        pytest.skip(f"fake_world(device={spec.device!r}) needs a {spec.device} device; none is available")
    if spec.values == "exact":
        _check_exact_item(item)
    if spec.backend == "fakepg":
        _load_backend(item.config)
    world = FakeWorld(spec).start()
    item.stash[_WORLD] = world
    try:
        if _SWEEP in item.stash:
            world.record_call_sites()
        item.config.hook.pytest_fake_world_setup(world=world, item=item)
    except BaseException:
        _take_down(item, world)
        raise
    return world


# Fixtures whose value differs per rank in an exact world: the test body gets
# each rank's own (pytest_pyfunc_call); a fixture cannot take them.
_PER_RANK = ("rank", "device_mesh", "collectives")


class _PerRank:
    """What a per-rank fixture holds in an exact world outside any rank."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}: one per rank, given to the test body of an exact world>"


def _check_exact_item(item: pytest.Item) -> None:
    """An exact world runs the test function once per rank; fixtures run once,
    outside every rank, so none may take a per-rank fixture."""
    import unittest

    cls = getattr(item, "cls", None)
    if not isinstance(item, pytest.Function) or (cls is not None and issubclass(cls, unittest.TestCase)):
        pytest.fail(
            f"values='exact' runs a test function once per rank; {item.name} is not a plain "
            "test function (a unittest.TestCase method?) [invalid @pytest.mark.fake_world(...)]",
            pytrace=False,
        )
    for name, defs in item._fixtureinfo.name2fixturedefs.items():
        fixture = defs[-1]
        if getattr(fixture.func, "__module__", None) == __name__:
            continue
        taken = [a for a in fixture.argnames if a in _PER_RANK]
        if taken:
            pytest.fail(
                f"fixture {name!r} takes {taken[0]!r}, which differs per rank in an exact world "
                "(values='exact'): fixtures run once, outside every rank, and only the test "
                f"body runs per rank. Take {taken[0]!r} in the test function instead.",
                pytrace=False,
            )


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """An exact world runs the test function as every rank's program, each
    rank with its own rank, device_mesh and collectives."""
    __tracebackhide__ = True
    world = pyfuncitem.stash.get(_WORLD, None)
    if world is None or not world.exact:
        return None
    funcargs = pyfuncitem.funcargs
    names = pyfuncitem._fixtureinfo.argnames
    per_rank = [n for n in names if n in _PER_RANK]

    def program() -> None:
        __tracebackhide__ = True
        kwargs = {n: funcargs[n] for n in names}
        for n in per_rank:
            kwargs[n] = world.rank if n == "rank" else world.device_mesh() if n == "device_mesh" else world.collectives
        pyfuncitem.obj(**kwargs)

    world.run(program)
    return True


def _load_backend(config: pytest.Config) -> None:
    """The first world of a run loads the backend, and may compile it: with
    output capture suspended, so the one line saying so reaches the terminal
    instead of a run that sits silent for a minute."""
    from . import _backend

    if _backend.is_loaded():
        return
    capture = config.pluginmanager.getplugin("capturemanager")
    if capture is None:
        _backend.load()
        return
    with capture.global_and_fixture_disabled():
        _backend.load()


def _take_down(item: pytest.Item, world: FakeWorld) -> None:
    settings = item.config.stash[_SETTINGS]
    unfired: list[str] = []
    try:
        item.config.hook.pytest_fake_world_teardown(world=world, item=item)
        if (settings.report or settings.report_json) and world.spec.record:
            from . import report

            entry = report.entry(world)
            if entry is not None:
                item.stash[_REPORT_ENTRY] = entry
        unfired = world.unfired_faults()
    finally:
        del item.stash[_WORLD]
        world.stop()
    if unfired:
        message = f"{item.nodeid}: " + "; ".join(unfired)
        if settings.strict:
            pytest.fail(message, pytrace=False)
        warnings.warn(FakeWorldFaultWarning(message), stacklevel=1)


def _check_leaks(item: pytest.Item) -> None:
    """A process group the test made and left behind would break every test
    after it: it is destroyed, and reported."""
    found = clean_up_foreign_state()
    if found is None:
        return
    message = (
        f"{item.nodeid} left a default process group behind ({found}); "
        "pytest-fakepg destroyed it. Call torch.distributed.destroy_process_group() "
        f"in the test, or use the {MARKER} marker or FakeWorld, which clean up for you."
    )
    if item.config.stash[_SETTINGS].strict:
        pytest.fail(message, pytrace=False)
    warnings.warn(FakeWorldLeakWarning(message), stacklevel=1)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """A marked test's world comes up before any fixture, so fixtures and the
    test body alike can call torch.distributed. Every test is noted as
    running, for this plugin's fixtures."""
    _RUNNING.append(item)
    case = item.stash.get(_CASE, None)
    if case is not None:
        _bring_up(item, case)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    """After the test's fixtures are torn down: the world goes down, and a
    process group the test made itself is destroyed and reported."""
    try:
        return (yield)
    finally:
        if item in _RUNNING:
            _RUNNING.remove(item)
        world = item.stash.get(_WORLD, None)
        if world is not None:
            _take_down(item, world)
        _check_leaks(item)


class _Carrier:
    """Puts data for the process that reports on the test reports, where
    pytest-xdist carries their attributes: the trace of a swept case on its
    call report, the collectives report's entry on the teardown report.
    Registered only in runs that need it, so other runs pay nothing per test."""

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, Any, Any]:
        report = yield
        if call.when == "call" and _SWEEP in item.stash:
            world = item.stash.get(_WORLD, None)
            if world is not None:
                from . import consistency

                report.fake_world_trace = consistency.trace(world, *item.stash[_SWEEP], item.nodeid)
        elif call.when == "teardown":
            entry = item.stash.get(_REPORT_ENTRY, None)
            if entry is not None:
                report.fake_world_report = entry
        return report


class _Gatherer:
    """In the process that reports (the only one, or pytest-xdist's
    controller, never a worker): collects report entries, and compares a
    sweep's ranks once its last case is in. Registered per config, so its
    hooks know their config."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.checker: Any = None

    @pytest.hookimpl(tryfirst=True)  # before the terminal reporter and the failure count
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        trace = getattr(report, "fake_world_trace", None)
        if trace is not None:
            if self.checker is None:
                from . import consistency

                self.checker = consistency.Checker(self.config.stash[_SETTINGS].trace_dir)
            self.checker.add(report, trace)
        entry = getattr(report, "fake_world_report", None)
        if entry is not None:
            self.config.stash[_REPORT][report.nodeid] = entry


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    settings = config.stash.get(_SETTINGS, None)
    if settings is None or not settings.report:
        return
    from . import report

    report.render(terminalreporter, config.stash[_REPORT])


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    settings = config.stash.get(_SETTINGS, None)
    if settings is None or not settings.report_json or hasattr(config, "workerinput"):
        return
    from . import report

    report.write_json(settings.report_json, config.stash[_REPORT])


# -- fixtures ------------------------------------------------------------------


def _test_world() -> FakeWorld:
    """The running test's FakeWorld, brought up now if it is not up yet (see
    the fake_world fixture)."""
    if not _RUNNING:
        raise RuntimeError("pytest-fakepg's fixtures give a running test its fake world; no test is running")
    item = _RUNNING[-1]
    world = item.stash.get(_WORLD, None)
    if world is None:
        # Goes down in pytest_runtest_teardown, after every fixture.
        world = _bring_up(item, _single_case(item, None))
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
    world = _test_world()
    if world.exact:
        return _PerRank("rank")  # type: ignore[return-value]
    return world.rank


@pytest.fixture
def world_size() -> int:
    """The fake world's size."""
    return _test_world().world_size


@pytest.fixture
def device_mesh() -> DeviceMesh:
    """The world's DeviceMesh: the one asked for with mesh=..., else a 1-D
    mesh over every rank. In an exact world, each rank's test body gets its own."""
    world = _test_world()
    if world.exact:
        return _PerRank("device_mesh")  # type: ignore[return-value]
    return world.device_mesh()


@pytest.fixture
def fake_store() -> Store:
    """The store behind the fake world's process groups."""
    return _test_world().store


@pytest.fixture
def collectives() -> CollectiveLog:
    """The log of collectives the test ran (a CollectiveLog); in an exact
    world, each rank's test body gets the log of what that rank issued."""
    world = _test_world()
    if world.exact:
        return _PerRank("collectives")  # type: ignore[return-value]
    return world.collectives
