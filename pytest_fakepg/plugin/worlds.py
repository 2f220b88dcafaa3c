"""A test's world: brought up before its fixtures, taken down after them,
with the leaks and unfired faults it left reported."""

from __future__ import annotations

import functools
import sys
import warnings
from typing import TYPE_CHECKING

import pytest

from .. import _compat
from ..errors import FakeWorldFaultWarning, FakeWorldLeakWarning
from ..environment import device_available
from ..fake.cuda import needed as fake_cuda_needed
from ..world import _running_world
from . import exact, real
from .state import MARKER, REPORT_ENTRY, RUNTEST, SETTINGS, SWEEP, WORLD, Case

if TYPE_CHECKING:
    from ..world import FakeWorld


def bring_up(item: pytest.Item, case: Case) -> FakeWorld:
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
    from ..factory import world_for

    if not device_available(spec.device) and not fake_cuda_needed(spec.device, spec.tensors):
        # Reported at the test, not at this line (as a skip marker is).
        raise pytest.skip.Exception(
            f"fake_world(device={spec.device!r}) needs a {spec.device} device; none is available",
            _use_item_location=True,
        )
    if spec.values == "exact":
        exact.check_item(item)
    if spec.backend == "fakepg":
        load_backend(item.config)
    world = (real.world_for(item, spec) or world_for(spec)).start()
    item.stash[WORLD] = world
    if world.exact and exact.is_testcase(item):  # pytest runs it through unittest: run it per rank instead
        item.stash[RUNTEST] = _compat.patching.install([(item, {"runtest": functools.partial(exact.call_testcase, item, world)})])
    try:
        if SWEEP in item.stash:
            world.record_call_sites()
        item.config.hook.pytest_fake_world_setup(world=world, item=item)
    except BaseException:
        take_down(item, world)
        raise
    return world


def load_backend(config: pytest.Config) -> None:
    """The first world of a run loads the backend, and may compile it: with
    output capture suspended, so the one line saying so reaches the terminal
    instead of a run that sits silent for a minute."""
    from .. import _backend

    if _backend.is_loaded():
        return
    capture = config.pluginmanager.getplugin("capturemanager")
    if capture is None:
        _backend.load()
        return
    with capture.global_and_fixture_disabled():
        _backend.load()


def take_down(item: pytest.Item, world: FakeWorld) -> None:
    settings = item.config.stash[SETTINGS]
    unfired: list[str] = []
    try:
        item.config.hook.pytest_fake_world_teardown(world=world, item=item)
        if (settings.report or settings.report_json) and world.spec.record:
            from . import report

            entry = report.entry(world)
            if entry is not None:
                item.stash[REPORT_ENTRY] = entry
        unfired = world.unfired_faults()
        real.keep_ledger(item, world)
    finally:
        del item.stash[WORLD]
        _compat.patching.remove(item.stash.get(RUNTEST, []))
        world.stop()
    if unfired:
        message = f"{item.nodeid}: " + "; ".join(unfired)
        if settings.strict:
            pytest.fail(message, pytrace=False)
        warn_at_test(item, FakeWorldFaultWarning(message))


def warn_at_test(item: pytest.Item, warning: Warning) -> None:
    """A warning about a test, shown at the test's own line (not this
    plugin's) in pytest's warnings summary."""
    path, line, _ = item.reportinfo()
    warnings.warn_explicit(warning, type(warning), filename=str(path), lineno=(line or 0) + 1)


def check_leaks(item: pytest.Item) -> None:
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
    if item.config.stash[SETTINGS].strict:
        pytest.fail(message, pytrace=False)
    warn_at_test(item, FakeWorldLeakWarning(message))


def clean_up_foreign_state() -> str | None:
    """Destroy a default process group that no FakeWorld owns (one a test
    made and left behind), with torch's caches; describe what was found.
    Costs nothing in a process that never imported torch.distributed."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return None
    if _running_world() is not None:
        return None  # a FakeWorld is up: it owns the group
    found = f"backend {dist.get_backend()!r}, world size {dist.get_world_size()}"
    dist.destroy_process_group()
    _compat.device_mesh.clear_mesh_registries()
    _compat.dtensor.clear_dtensor_state(every_thread=True)
    return found


def _from_the_world(exc: BaseException) -> bool:
    """Whether ``exc`` is a failure the world reports: a collective's
    (``DistError``: a mismatch, an injected fault, a store wait), a deadlock
    or other error of this package's, or a value a fake tensor cannot have."""
    import sys

    from .. import errors

    dist = sys.modules.get("torch.distributed")
    dist_error = getattr(dist, "DistError", None)
    ours = tuple(getattr(errors, name) for name in errors.__all__)
    return (isinstance(exc, ours) or (dist_error is not None and isinstance(exc, dist_error))
            or _note_of(exc) is not None)


def _note_of(exc: BaseException) -> str | None:
    """The note this package added to a torch error, if any."""
    return next((n for n in getattr(exc, "__notes__", ()) if n.startswith("pytest-fakepg: ")), None)


def show_at_user_code(excinfo: pytest.ExceptionInfo[BaseException]) -> None:
    """Leave torch's frames and this package's out of the traceback of a
    failure the world reports (``_from_the_world``), or of pytest-timeout's
    ``Timeout`` in a wait of the world, when frames of the test's own code
    remain: the user's line is where to look."""
    from .._frames import not_user_code

    exc = excinfo.value
    timeout = isinstance(exc, pytest.fail.Exception) and str(exc).startswith("Timeout")
    if not (timeout or _from_the_world(exc)):
        return
    inside = not_user_code()
    # pytest cuts a traceback from the test function's frame by following the
    # raw frames, so the raw chain itself leaves torch's out.
    nodes = []
    tb = excinfo.tb
    while tb is not None:
        nodes.append(tb)
        tb = tb.tb_next
    kept = [node for node in nodes if not node.tb_frame.f_code.co_filename.startswith(inside)]
    if not kept or len(kept) == len(nodes) or kept[0] is not nodes[0]:
        return
    for node, after in zip(kept, kept[1:]):
        node.tb_next = after
    kept[-1].tb_next = None
    excinfo.traceback = pytest.ExceptionInfo.from_exc_info((excinfo.type, excinfo.value, nodes[0])).traceback


def lead_with_cause(report: pytest.TestReport, excinfo: pytest.ExceptionInfo[BaseException]) -> None:
    """The short summary line and ``--tb=line`` of a failure the world
    reports start with its cause, the exception's type after it: at 80
    columns, ``pytest_fakepg.errors.FakeWorldDeadlock: ...`` left no room
    for the cause."""
    crash = getattr(report.longrepr, "reprcrash", None)
    exc = excinfo.value
    if crash is None or not _from_the_world(exc):
        return
    note = _note_of(exc)
    lines = (note.removeprefix("pytest-fakepg: ") if note else str(exc)).strip().splitlines()
    if lines:
        crash.message = f"{lines[0]} ({type(exc).__name__})"
