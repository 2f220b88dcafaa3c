"""Collection: a marker's arguments become cases (one world each), items
note their case, and the cases of one test that sweep ranks of one world
are keyed as a sweep for the check across ranks."""

from __future__ import annotations

import difflib
import inspect
import warnings
from typing import Any

import pytest

from .. import spec as _spec
from .state import CASE, CASE_PARAM, MARKER, SETTINGS, SWEEP, Case

# The marker takes a world's arguments (WorldSpec.build's), check_ranks and id.
MARKER_SIGNATURE = _spec.SIGNATURE.replace(
    parameters=[
        *_spec.SIGNATURE.parameters.values(),
        inspect.Parameter("check_ranks", inspect.Parameter.KEYWORD_ONLY, default=None, annotation="bool | None"),
        inspect.Parameter("id", inspect.Parameter.KEYWORD_ONLY, default=None, annotation="str | None"),
    ]
)
MARKER_HELP = (
    MARKER
    + str(
        MARKER_SIGNATURE.replace(
            parameters=[p.replace(annotation=p.empty) for p in MARKER_SIGNATURE.parameters.values()],
            return_annotation=MARKER_SIGNATURE.empty,
        )
    )
    + ": run the test in a fake torch.distributed world (process group, store "
    "and optional DeviceMesh) for each world size, mesh and rank given; "
    "rank='all' sweeps every rank, and the ranks of a sweep are checked to "
    "issue the same collectives unless check_ranks=False; id='plan' pins the "
    "case id (test_x[plan]) so snapshots survive a change of the world. See pytest-fakepg's README."
)


def marker_args(marker: pytest.Mark, node: Any) -> tuple[dict[str, Any], bool | None, str | None]:
    """The marker's world arguments, bound, its check_ranks and its id.
    ``node`` (the test's definition or item) may carry one marker of its
    own: two would silently run one world."""
    own = [m for m in node.own_markers if m.name == MARKER]
    if len(own) > 1:
        raise ValueError(
            f"{len(own)} @pytest.mark.{MARKER} markers on one test: "
            + " and ".join(_marker_text(m) for m in own)
            + "; keep one (to run several worlds, give one marker lists: world_size=[4, 8], mesh=[...])"
        )
    args = _spec.bind(marker.args, marker.kwargs, MARKER_SIGNATURE)
    check = args.pop("check_ranks")
    if check is not None and not isinstance(check, bool):
        raise TypeError(f"check_ranks must be True or False, got {check!r}")
    pinned = args.pop("id")
    if pinned is not None and (not isinstance(pinned, str) or not pinned or "[" in pinned or "]" in pinned):
        raise ValueError(f"id must be a non-empty str without brackets, like id='plan'; got {pinned!r}")
    return args, check, pinned


def pinned_ids(pinned: str, specs: list[_spec.WorldSpec]) -> list[str]:
    """NOTE [Pinned case ids]
    A case id names the world (``w1024-dp128xtp8-r0``), so a change of plan
    renames the test, and a snapshot stored under the old name is reported
    missing instead of diffed. ``id="plan"`` names the world instead: the
    case is ``test_x[plan]``, and a rank sweep's cases ``plan-r0``,
    ``plan-r1``...; a marker that gives several world sizes or meshes has no
    one world to name."""
    worlds = sorted({(s.world_size, s.mesh_id) for s in specs})
    if len(worlds) > 1:
        shown = ", ".join(f"w{size}-{mesh}" if mesh else f"w{size}" for size, mesh in worlds)
        raise ValueError(f"id={pinned!r} names one world, and this marker gives {len(worlds)}: {shown}; "
                         "give one world size and one mesh, or leave id out")
    if len(specs) == 1:
        return [pinned]
    return [f"{pinned}-{_spec.case_id(s).rsplit('-', 1)[1]}" for s in specs]


def _marker_text(marker: pytest.Mark) -> str:
    given = [repr(a) for a in marker.args] + [f"{k}={v!r}" for k, v in marker.kwargs.items()]
    return f"{MARKER}({', '.join(given)})"


def error_text(exc: Exception) -> str:
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


def generate(metafunc: pytest.Metafunc) -> None:
    """pytest_generate_tests: one case per world the marker asks for."""
    marker = metafunc.definition.get_closest_marker(MARKER)
    if marker is None or _drives(metafunc):
        return  # worlds built at setup: see _single_case
    settings = metafunc.config.stash[SETTINGS]
    try:
        args, check, pinned = marker_args(marker, metafunc.definition)
        specs = _spec.expand(
            args,
            default_world_size=settings.world_size,
            default_backend=settings.backend,
            default_env=settings.env,
            # a marker that names its ranks keeps them
            all_ranks=settings.all_ranks and "rank" not in marker.kwargs,
        )
        if pinned is None:
            hook = metafunc.config.hook.pytest_fake_world_make_id
            ids = [hook(spec=s, definition=metafunc.definition) for s in specs]
        else:
            ids = pinned_ids(pinned, specs)
    except (TypeError, ValueError) as exc:
        cases = [Case(None, error_text(exc), id="invalid-fake-world")]
    else:
        cases = [Case(s, None, check, case_id) for s, case_id in zip(specs, ids)]
    # The cases ride on a parameter the test function does not take: the
    # setup hook reads it from the item's callspec, so no fixture runs for it.
    # parametrize() accepts only names in the fixture closure, hence the append.
    if CASE_PARAM not in metafunc.fixturenames:
        metafunc.fixturenames.append(CASE_PARAM)
    metafunc.parametrize(CASE_PARAM, cases, ids=[c.id for c in cases])


def single_case(item: pytest.Item, marker: pytest.Mark | None) -> Case:
    """The one world of a test the marker does not parametrize:
    unittest.TestCase methods and tests whose own parametrize gives
    world_size or rank (at collection), and unmarked tests that ask for a
    fake-world fixture (at setup)."""
    settings = item.config.stash[SETTINGS]
    params = getattr(getattr(item, "callspec", None), "params", {})
    try:
        args, check, _ = marker_args(marker, item) if marker is not None else (_spec.bind((), {}), None, None)
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
            args, default_world_size=settings.world_size, default_backend=settings.backend, default_env=settings.env
        )
    except (TypeError, ValueError) as exc:
        return Case(None, error_text(exc))
    return Case(specs[0], None, check)


def _misspelt_marker(item: pytest.Item, known: set[str]) -> str | None:
    """Why ``item`` errors if it carries a marker no one registered whose
    name is this plugin's, misspelt (``fake_wrold``): it would otherwise run
    with no world, and fail far from the typo."""
    for mark in item.iter_markers():
        name = mark.name
        if (abs(len(name) - len(MARKER)) <= 2 and name not in known
                and difflib.SequenceMatcher(None, name, MARKER).ratio() >= 0.8):
            return (
                f"@pytest.mark.{name} is not a marker anyone registered: did you mean "
                f"@pytest.mark.{MARKER}? (as written, the test would run without a fake world)"
            )
    return None


def note_items(config: pytest.Config, items: list[pytest.Item]) -> bool:
    """Note which items get a world, once, so the per-test hooks below cost
    unmarked tests one stash lookup; and which cases form a sweep whose ranks
    are compared. Returns whether any sweep is checked."""
    settings = config.stash[SETTINGS]
    # key -> (compare the ranks?, the sweep's cases)
    sweeps: dict[str, tuple[bool, list[pytest.Item]]] = {}
    unswept = []
    known = {line.split(":")[0].split("(")[0].strip() for line in config.getini("markers")}
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        case = params.get(CASE_PARAM)
        if case is None:
            marker = item.get_closest_marker(MARKER)
            if marker is None:
                misspelt = _misspelt_marker(item, known)
                if misspelt is not None:
                    item.stash[CASE] = Case(None, misspelt)
                continue
            case = single_case(item, marker)
            exact = case.spec is not None and case.spec.values == "exact"  # runs every rank already
            if settings.all_ranks and "rank" not in marker.kwargs and not exact:
                unswept.append(item.nodeid)
        item.stash[CASE] = case
        spec = case.spec
        wanted = settings.check_ranks if case.check_ranks is None else case.check_ranks
        if spec is not None and case.id and spec.backend == "fakepg" and spec.record and (wanted or settings.trace_dir):
            world = f"w{spec.world_size}-{spec.mesh_id}" if spec.mesh_id else f"w{spec.world_size}"
            key = item.nodeid.replace(case.id, world, 1)
            sweeps.setdefault(key, (wanted, []))[1].append(item)
    swept = False
    for key, (check, members) in sweeps.items():
        if len({m.stash[CASE].spec.rank for m in members}) > 1:  # type: ignore[union-attr]
            swept = True
            for m in members:
                m.stash[SWEEP] = (key, len(members), check)
    if unswept:
        warnings.warn(
            pytest.PytestWarning(
                f"--fake-world-ranks=all cannot sweep {len(unswept)} test(s) that are "
                "unittest.TestCase methods or parametrize world_size/rank themselves; they "
                f"run one rank each: {', '.join(unswept[:5])}{' ...' if len(unswept) > 5 else ''}"
            ),
            stacklevel=1,
        )
    return swept
