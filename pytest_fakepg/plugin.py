"""pytest-fakepg's pytest adapter: options, the fake_world marker, fixtures,
parametrization and the collectives report.

Thin on purpose: marker arguments become WorldSpecs (spec.py) and worlds come
and go through FakeWorld (world.py). Nothing here touches torch, and torch is
not imported when pytest loads this plugin.
"""

from __future__ import annotations

import inspect
import json
import warnings
from typing import TYPE_CHECKING, Any, Iterator, NamedTuple

import pytest

from . import spec as _spec
from .world import clean_up_foreign_state, device_available

if TYPE_CHECKING:
    from .world import FakeWorld

MARKER = "fake_world"
_SIGNATURE = inspect.signature(_spec.marker_signature)
_MARKER_HELP = (
    MARKER
    + str(
        _SIGNATURE.replace(
            parameters=[p.replace(annotation=p.empty) for p in _SIGNATURE.parameters.values()],
            return_annotation=_SIGNATURE.empty,
        )
    )
    + ": run the test in a fake torch.distributed world (process group, store "
    "and optional DeviceMesh) for each world size, mesh and rank given; "
    "rank='all' sweeps every rank. See pytest-fakepg's README."
)


class FakeWorldLeakWarning(pytest.PytestWarning):
    """A test left a process group of its own behind; the plugin destroyed it."""


class _Settings(NamedTuple):
    backend: str
    all_ranks: bool
    world_size: int
    report: bool
    report_json: str | None
    strict: bool


class _Case(NamedTuple):
    """One generated test case: the world it gets, or why it cannot have one."""

    spec: _spec.WorldSpec | None
    error: str | None = None


_SETTINGS = pytest.StashKey[_Settings]()
_REPORT = pytest.StashKey[dict[str, dict[str, Any]]]()
_WORLD = pytest.StashKey["FakeWorld"]()
_CASE_PARAM = "_fake_world_case"
_CASE = pytest.StashKey[_Case]()


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
        help="'all' runs every marked test once per rank of each world size.",
    )
    group.addoption(
        "--fake-world-report",
        dest="fake_world_report",
        action="store_true",
        default=None,
        help="print the collectives each fake-world test ran, by op, with totals.",
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
        help="make a process group left behind by a test an error, not a warning.",
    )
    parser.addini("fake_world_size", "world size of a fake world that names none (default 2)", default="2")
    parser.addini("fake_world_backend", "default c10d backend: fakepg or fake", default="fakepg")
    parser.addini("fake_world_ranks", "'all' to sweep every rank of marked tests", default="")
    parser.addini("fake_world_report", "print the collectives report", type="bool", default=False)
    parser.addini("fake_world_strict", "left-behind process groups are errors", type="bool", default=False)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from . import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


def _option(config: pytest.Config, name: str) -> Any:
    value = config.getoption(name)
    return config.getini(name) if value is None else value


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
    config.stash[_SETTINGS] = _Settings(
        backend=backend,
        all_ranks=ranks == _spec.RANK_SWEEP,
        world_size=size,
        report=bool(_option(config, "fake_world_report")),
        report_json=config.getoption("fake_world_report_json"),
        strict=bool(_option(config, "fake_world_strict")),
    )
    config.stash[_REPORT] = {}


# -- parametrization -------------------------------------------------------------


def _bind(marker: pytest.Mark) -> dict[str, Any]:
    try:
        bound = _SIGNATURE.bind(*marker.args, **marker.kwargs)
    except TypeError as exc:
        allowed = ", ".join(_SIGNATURE.parameters)
        raise TypeError(f"{exc} (allowed: {allowed})") from None
    bound.apply_defaults()
    return dict(bound.arguments)


def _error_text(name: str, exc: Exception) -> str:
    return f"{name}: invalid @pytest.mark.{MARKER}(...): {exc}"


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
        specs = _spec.expand(
            _bind(marker),
            default_world_size=settings.world_size,
            default_backend=settings.backend,
            all_ranks=settings.all_ranks,
        )
    except (TypeError, ValueError) as exc:
        cases = [_Case(None, _error_text(metafunc.definition.nodeid, exc))]
        ids = ["invalid-fake-world"]
    else:
        hook = metafunc.config.hook.pytest_fake_world_make_id
        ids = [hook(spec=s, definition=metafunc.definition) for s in specs]
        cases = [_Case(s) for s in specs]
    # The cases ride on a parameter the test function does not take: the
    # setup hook reads it from the item's callspec, so no fixture runs for it.
    # parametrize() accepts only names in the fixture closure, hence the append.
    if _CASE_PARAM not in metafunc.fixturenames:
        metafunc.fixturenames.append(_CASE_PARAM)
    metafunc.parametrize(_CASE_PARAM, cases, ids=ids)


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
        args = _bind(marker) if marker is not None else _bind(pytest.mark.fake_world.mark)
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
        specs = _spec.expand(
            args,
            default_world_size=settings.world_size,
            default_backend=settings.backend,
        )
    except (TypeError, ValueError) as exc:
        return _Case(None, _error_text(item.nodeid, exc))
    return _Case(specs[0])


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
    world = FakeWorld.from_spec(spec).start()
    item.stash[_WORLD] = world
    try:
        item.config.hook.pytest_fake_world_setup(world=world, item=item)
    except BaseException:
        _take_down(item, world)
        raise
    return world


def _take_down(item: pytest.Item, world: FakeWorld) -> None:
    try:
        item.config.hook.pytest_fake_world_teardown(world=world, item=item)
        settings = item.config.stash[_SETTINGS]
        if (settings.report or settings.report_json) and world.spec.record:
            log = world.collectives
            item.config.stash[_REPORT][item.nodeid] = {
                "world_size": world.world_size,
                "rank": world.rank,
                "mesh": world.spec.mesh_id,
                "collectives": log.summary(),
                "total": {"count": log.count(), "bytes": log.total_bytes()},
            }
    finally:
        del item.stash[_WORLD]
        world.stop()


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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Note which items get a world, once, so the per-test hooks below cost
    unmarked tests one stash lookup."""
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        case = params.get(_CASE_PARAM)
        if case is None:
            marker = item.get_closest_marker(MARKER)
            if marker is not None:
                case = _single_case(item, marker)
        if case is not None:
            item.stash[_CASE] = case


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """A marked test's world comes up before any fixture, so fixtures and the
    test body alike can call torch.distributed."""
    case = item.stash.get(_CASE, None)
    if case is not None:
        _bring_up(item, case)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    """After the test's fixtures are torn down: the world goes down, and a
    process group the test made itself is destroyed and reported."""
    try:
        return (yield)
    finally:
        world = item.stash.get(_WORLD, None)
        if world is not None:
            _take_down(item, world)
        _check_leaks(item)


# -- fixtures ------------------------------------------------------------------


@pytest.fixture
def fake_world(request: pytest.FixtureRequest) -> FakeWorld:
    """The test's FakeWorld. Without the fake_world marker, a default world:
    world size from the fake_world_size ini option (2) or the test's own
    world_size parameter, rank 0 or the test's rank parameter."""
    item = request.node
    world = item.stash.get(_WORLD, None)
    if world is None:
        # Goes down in pytest_runtest_teardown, after every fixture.
        world = _bring_up(item, _single_case(item, None))
    return world


@pytest.fixture
def rank(fake_world: FakeWorld) -> int:
    """This process's rank in the fake world."""
    return fake_world.rank


@pytest.fixture
def world_size(fake_world: FakeWorld) -> int:
    """The fake world's size."""
    return fake_world.world_size


@pytest.fixture
def device_mesh(fake_world: FakeWorld) -> Any:
    """The world's DeviceMesh: the one asked for with mesh=..., else a 1-D
    mesh over every rank."""
    return fake_world.device_mesh()


@pytest.fixture
def fake_store(fake_world: FakeWorld) -> Any:
    """The store behind the fake world's process groups."""
    return fake_world.store


@pytest.fixture
def collectives(fake_world: FakeWorld) -> Any:
    """The log of collectives the test ran (a CollectiveLog)."""
    return fake_world.collectives


# -- report ------------------------------------------------------------------------


def _human(nbytes: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024  # type: ignore[assignment]
    raise AssertionError("unreachable")


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    settings = config.stash.get(_SETTINGS, None)
    if settings is None or not settings.report:
        return
    report = config.stash[_REPORT]
    tr = terminalreporter
    tr.write_sep("=", "fake world collectives")
    total_count = total_bytes = 0
    for nodeid, entry in report.items():
        tr.write_line(f"{nodeid} (world {entry['world_size']}, rank {entry['rank']})")
        for op, stats in entry["collectives"].items():
            tr.write_line(f"    {op:<34}{stats['count']:>8} calls {_human(stats['bytes']):>12}")
        tr.write_line(f"    {'total':<34}{entry['total']['count']:>8} calls {_human(entry['total']['bytes']):>12}")
        total_count += entry["total"]["count"]
        total_bytes += entry["total"]["bytes"]
    tr.write_line(f"{len(report)} tests ran {total_count} collectives, {_human(total_bytes)} in all")


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    settings = config.stash.get(_SETTINGS, None)
    if settings is None or not settings.report_json:
        return
    report = config.stash[_REPORT]
    document = {
        "tests": report,
        "total": {
            "tests": len(report),
            "count": sum(e["total"]["count"] for e in report.values()),
            "bytes": sum(e["total"]["bytes"] for e in report.values()),
        },
    }
    with open(settings.report_json, "w", encoding="utf-8") as fh:
        json.dump(document, fh, indent=2)
        fh.write("\n")
