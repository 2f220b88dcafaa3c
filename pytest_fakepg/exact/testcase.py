"""unittest.TestCase tests in exact worlds: a test method as every rank's
program, each rank with an instance of its own.

Two doors, one machinery:

- ``run_test_method``: the ``fake_world`` marker with ``values="exact"`` on a
  ``unittest.TestCase`` class or method (pytest). Every rank runs ``setUp``,
  the test method and ``tearDown`` on its own instance, through unittest's own
  ``TestCase.run``, so skips, expected failures, subtests and cleanups mean
  what they mean in unittest.
- ``ExactTestCase`` / ``create_exact_test_class``: torch's harness classes
  (``MultiProcessTestCase``, ``DTensorTestBase``, ``FSDPTest``,
  ``MultiThreadedTestCase``) with their processes or threads replaced by an
  exact world. The test runs as torch's per-rank process runs it (the test
  method on a rank's copy of the instance, ``self.rank`` set), under pytest
  or unittest alike, as ``create_local_tensor_test_class`` does for torch's
  LocalTensorMode.

On a cluster a rank that fails (or skips) ends the job: the other ranks hang
or are killed. Here the first failure, error or skip on any rank stops the
world (the other ranks' pending calls raise) and is the test's outcome, with
a note naming the rank; the failing rank itself goes on to its ``tearDown``
and cleanups, as a process does before it exits.
"""

from __future__ import annotations

import copy
import functools
import types
import unittest
from typing import TYPE_CHECKING, Any

from .. import _compat

if TYPE_CHECKING:
    from .world import ExactWorld

# The default of torch's MultiProcessTestCase.world_size (DEFAULT_WORLD_SIZE).
DEFAULT_WORLD_SIZE = 4


class ExpectedFailure(Exception):
    """A rank's test failed as ``@unittest.expectedFailure`` said it would."""


class _RankResult(unittest.TestResult):
    """One rank's unittest result: its first failure, error or skip stops the
    world, and is what ``outcome`` holds."""

    def __init__(self, world: ExactWorld) -> None:
        super().__init__()
        self.world = world
        self.outcome: BaseException | None = None

    def _stop(self, exc: BaseException) -> None:
        if self.outcome is None:
            self.outcome = exc
            self.world._stop_run(exc)

    def addError(self, test: Any, err: Any) -> None:  # noqa: N802 - unittest's names
        self._stop(err[1])

    addFailure = addError

    def addSubTest(self, test: Any, subtest: Any, err: Any) -> None:  # noqa: N802
        if err is not None:
            exc = err[1]
            if hasattr(exc, "add_note"):
                exc.add_note(f"(in subtest {subtest})")
            self._stop(exc)

    def addSkip(self, test: Any, reason: str) -> None:  # noqa: N802
        self._stop(unittest.SkipTest(reason))

    def addExpectedFailure(self, test: Any, err: Any) -> None:  # noqa: N802
        failure = ExpectedFailure(f"{type(err[1]).__name__}: {err[1]}")
        failure.__cause__ = err[1]
        self._stop(failure)


def run_test_method(world: ExactWorld, cls: type[unittest.TestCase], name: str) -> None:
    """The marker's door: test method ``name`` of ``cls`` as every rank's
    program of ``world`` (which is up), each rank on its own instance with
    ``self.rank`` its rank. Raises the outcome: the first rank's failure,
    ``unittest.SkipTest``, ``ExpectedFailure``; or AssertionError for an
    expected failure that passed on every rank."""
    __tracebackhide__ = True
    if is_torch_harness(cls):
        raise TypeError(harness_error(cls))
    passed_unexpectedly: list[int] = []

    def program() -> None:
        rank = world.rank
        instance = cls(name)
        _set_rank(instance, rank)
        result = _RankResult(world)
        instance.run(result)
        if result.unexpectedSuccesses:
            passed_unexpectedly.append(rank)

    world.run(program)
    if passed_unexpectedly:
        raise AssertionError(
            f"{cls.__name__}.{name} is marked @unittest.expectedFailure but passed on every rank "
            f"of an exact fake world of {world.world_size}"
        )


def _set_rank(instance: unittest.TestCase, rank: int) -> None:
    try:
        instance.rank = rank  # type: ignore[attr-defined]
    except AttributeError:  # a property of the class's own, without a setter
        pass


# -- torch's harness classes ------------------------------------------------------


def is_torch_harness(cls: type) -> bool:
    """Whether ``cls`` is built on torch's process or thread harness (it
    wraps each test method with ``join_or_run`` and spawns in setUp)."""
    return any(hasattr(cls, name) for name in ("_spawn_processes", "_spawn_threads")) and hasattr(cls, "join_or_run")


def harness_error(cls: type) -> str:
    """Why the marker does not run ``cls`` (a torch harness class), and what does."""
    harness = next((k.__name__ for k in cls.__mro__ if k.__name__ in _HARNESSES), "a join_or_run harness")
    return (
        f"{cls.__name__} is built on torch's {harness}, which starts a process (or thread) per rank "
        "itself; run it in exact worlds with pytest_fakepg.create_exact_test_class("
        f"{cls.__name__}), or with pytest_fakepg.ExactTestCase first among its bases, instead of "
        "@pytest.mark.fake_world(..., values='exact')"
    )


_HARNESSES = ("MultiProcessTestCase", "MultiThreadedTestCase", "MultiProcContinuousTest")


class ExactTestCase(unittest.TestCase):
    """torch's multi-process test harness, in one process: each test method
    runs as every rank's program of an exact fake world, where torch's
    ``MultiProcessTestCase`` would start a process per rank.

    Put it first among a harness class's bases, or let
    ``create_exact_test_class`` do it::

        class DTensorTest(ExactTestCase, DTensorTestBase): ...

    The class keeps its own ``world_size``, ``device_type``,
    ``build_device_mesh()``, ``@with_comms`` and ``init_pg``/``destroy_pg``:
    the group they set up is the world's, made for each rank before its
    program starts. Each rank runs the test method as torch's rank process
    does (no ``setUp`` per rank: that ran once, before the ranks) on a copy
    of the instance of its own, with ``self.rank`` its rank; a plain
    ``unittest.TestCase`` subclass gets the same, with a world of
    ``world_size`` (default 4) ranks on ``device_type`` (default "cpu").
    A failure on any rank fails the test, naming the rank; a skip on any rank
    (``self.skipTest``, torch's ``sys.exit`` with a ``TEST_SKIPS`` code for
    too few GPUs) skips it. What torch's harness does with processes
    themselves (``special_return_code_checks``, ``_join_processes``) is not
    supported: see docs/unittest.md."""

    MAIN_PROCESS_RANK = -1
    rank = -1  # outside the ranks, as in torch's main process

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        name = _compat.stdlib.test_method_name(self)
        method = getattr(self, name, None)
        # torch's harness wrapped the method with our join_or_run already.
        if method is not None and not getattr(method, "_fakepg_exact", False):
            setattr(self, name, self.join_or_run(method))

    @property
    def world_size(self) -> int:
        try:
            return super().world_size  # type: ignore[misc]
        except AttributeError:
            return DEFAULT_WORLD_SIZE

    @property
    def device_type(self) -> str:
        try:
            return super().device_type  # type: ignore[misc]
        except AttributeError:
            return "cpu"

    def join_or_run(self, fn: Any) -> Any:
        """The test method as it runs here: every rank's program of an exact
        world (torch's: join the rank processes, or be one)."""
        name = _compat.stdlib.test_method_name(self)

        @functools.wraps(fn)
        def wrapper(self: ExactTestCase) -> None:
            __tracebackhide__ = True
            return run_harness_test(self, name)

        wrapper._fakepg_exact = True  # type: ignore[attr-defined]
        return types.MethodType(wrapper, self)

    def _spawn_processes(self) -> None:
        """No processes: the ranks run in an exact world when the test method
        is called."""

    def _spawn_threads(self) -> None:
        """No threads of the harness's: the ranks run in an exact world when
        the test method is called."""


def run_harness_test(main: ExactTestCase, name: str) -> None:
    """Test method ``name`` of ``main`` (whose setUp ran) as every rank's
    program of an exact world of ``main.world_size`` ranks: what torch's rank
    process runs (``MultiProcessTestCase._run`` and ``run_test``), on a copy
    of ``main`` per rank."""
    __tracebackhide__ = True
    from .world import ExactWorld

    for unsupported in ("special_return_code_checks", "skip_return_code_checks"):
        if getattr(main, unsupported, None):
            raise NotImplementedError(
                f"{type(main).__name__}.{name} sets {unsupported}, which checks the exit codes of torch's "
                "rank processes; an exact fake world runs no processes (see docs/unittest.md)"
            )
    method = getattr(type(main), name)  # the class's function, every decorator included
    size = main.world_size
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"{type(main).__name__}.world_size is {size!r}; an exact fake world needs an int >= 1")
    world = ExactWorld(size, device=main.device_type)
    threaded = hasattr(main, "perThreadSetUp")  # MultiThreadedTestCase's per-rank setUp and tearDown

    def program() -> None:
        __tracebackhide__ = True
        rank = world.rank
        instance = copy.copy(main)  # each process has its own
        _set_rank(instance, rank)
        try:
            if threaded:
                instance.perThreadSetUp()
            try:
                method(instance)
            finally:
                if threaded:
                    instance.perThreadTearDown()
        except SystemExit as exc:  # torch's harness exits a rank to skip it
            _exited(exc, rank)

    with world:
        world.run(program)


def _exited(exc: SystemExit, rank: int) -> None:
    """A rank's ``sys.exit``: torch's harness exits with a ``TEST_SKIPS``
    code to skip (too few GPUs, a backend missing), which skips the test; 0
    ends the rank's program; any other code fails the test."""
    code = exc.code
    if code in (None, 0):
        return
    message = _compat.harness.test_skips().get(code) if isinstance(code, int) else None
    if message is not None:
        raise unittest.SkipTest(message) from None
    raise RuntimeError(f"rank {rank} called sys.exit({code!r})") from exc


def create_exact_test_class(orig_cls: type, skipped_tests: list[str] | None = None,
                            base_class: type = ExactTestCase) -> type:
    """``orig_cls`` (a torch harness class: ``DTensorTestBase``,
    ``MultiProcessTestCase``, ``FSDPTest``...) running each test in an exact
    fake world, as torch's ``create_local_tensor_test_class`` runs it under
    LocalTensorMode: ``DTensorTestExact = create_exact_test_class(DTensorTest)``.
    Tests named in ``skipped_tests`` are skipped. The new class is
    ``orig_cls`` with ``base_class`` first among its bases, named
    ``<orig_cls name>Exact``, in ``orig_cls``'s module."""
    if not isinstance(orig_cls, type) or not issubclass(orig_cls, unittest.TestCase):
        raise TypeError(f"create_exact_test_class takes a unittest.TestCase class; got {orig_cls!r}")
    skipped = list(skipped_tests or ())
    missing = [name for name in skipped if not callable(getattr(orig_cls, name, None))]
    if missing:
        raise ValueError(f"skipped_tests names {missing}, which {orig_cls.__name__} has no test method called")
    namespace: dict[str, Any] = {"__module__": orig_cls.__module__}
    for name in skipped:
        namespace[name] = _skipped(name)
    return type(f"{orig_cls.__name__}Exact", (base_class, orig_cls), namespace)


def _skipped(name: str) -> Any:
    def skipped(self: unittest.TestCase) -> None:
        self.skipTest("skipped in exact worlds (create_exact_test_class's skipped_tests)")

    skipped.__name__ = skipped.__qualname__ = name
    return skipped
