"""What the package reads and changes of the standard library beyond its
public API, in one place: the calling frame, ``sys.excepthook`` (which
torch's ``init_process_group`` wraps), Python's ``random`` per rank, a
unittest case's method, and threads a rank starts. Checked on CPython
3.11-3.14."""

from __future__ import annotations

import functools
import random
import sys
import threading
from collections.abc import Callable
from typing import Any

from .patching import Patch

# ``sys._getframe(depth)``: the frame ``depth`` calls up (the same function,
# so depths count as they would calling it directly).
getframe = sys._getframe


def excepthook() -> Any:
    return sys.excepthook


def set_excepthook(hook: Any) -> None:
    """Put back ``sys.excepthook`` as it was (torch's
    ``init_process_group`` wraps it each time it makes a default group)."""
    sys.excepthook = hook


def test_method_name(case: Any) -> str:
    """The test method a ``unittest.TestCase`` instance runs
    (``_testMethodName``, every CPython 3)."""
    return case._testMethodName


# The functions ``random`` exports as bound methods of its hidden instance
# (``random._inst``).
_RANDOM_NAMES = tuple(n for n, f in vars(random).items() if getattr(f, "__self__", None) is random._inst)  # type: ignore[attr-defined]


class RandomPerRank:
    """Python's ``random`` per rank: each rank draws from its own
    ``random.Random``, a copy of the caller's, whose bound methods are swapped
    into the module at each switch (cheaper than getstate/setstate). A rank's
    copy is made when it first calls ``random``: most programs never do."""

    def __init__(self, ranks: int) -> None:
        self.caller_inst = caller = random._inst  # type: ignore[attr-defined]
        self.module = vars(random)
        self.caller = {n: f for n in _RANDOM_NAMES if getattr(f := self.module.get(n), "__self__", None) is caller}
        self.ranks: list[dict[str, Any] | None] = [None] * ranks
        self.rank = 0
        self.first_calls = {n: functools.partial(self._first_call, n) for n in self.caller}
        self.installed = self.caller  # what the module holds now

    def _first_call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        inst = random.Random.__new__(random.Random)  # not seeded: setstate sets it all
        inst.setstate(self.caller_inst.getstate())
        bound = self.ranks[self.rank] = {n: getattr(inst, n) for n in self.caller}
        self.module.update(bound)
        self.installed = bound
        return bound[name](*args, **kwargs)

    def load(self, rank: int) -> None:
        self.rank = rank
        functions = self.ranks[rank] or self.first_calls
        if functions is not self.installed:  # ranks that never drew share first_calls
            self.module.update(functions)
            self.installed = functions

    def restore(self) -> None:
        self.module.update(self.caller)
        self.installed = self.caller
        self.first_calls.clear()  # each holds this object: left to the cycle collector, a run's garbage




def thread_start(context: Callable[[], Any], adopt: Callable[[Any], None],
                 release: Callable[[], None]) -> Patch:
    """``Thread.start`` that runs a thread started where ``context()`` is
    not None as that context: ``adopt(context)`` on the new thread before
    its target, ``release()`` after (NOTE [Threads a rank starts])."""
    original = threading.Thread.start

    @functools.wraps(original)
    def start(thread: threading.Thread) -> None:
        given = context()
        if given is not None:
            run = thread.run

            def run_in_context() -> None:
                adopt(given)
                try:
                    run()
                finally:
                    release()

            thread.run = run_in_context  # type: ignore[method-assign]
        original(thread)

    return threading.Thread, {"start": start}
