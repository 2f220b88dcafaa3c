"""Running an exact world's ranks: one thread per rank, one rank at a time.

NOTE [Exact worlds] (csrc/exact.cpp) says how collectives meet; NOTE [The
baton] (csrc/exact.hpp) how ranks take turns. This module starts the rank
threads, gives each rank the per-process state a separate process would have
(its RNG streams, and NOTE [Per-rank process state]) at each switch, and turns the way a
run ended into one error: the first rank's exception, or a deadlock report.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import threading
from collections.abc import Callable
from typing import Any, Protocol

from .. import _compat
from .. import process_state
from ..errors import FakeWorldDeadlock, RankStopped


class Ranks(Protocol):
    """What ``run`` needs of the world whose ranks it runs (ExactWorld)."""

    @property
    def world_size(self) -> int: ...

    # The global ranks that run, in order (NOTE [Hybrid worlds]); a rank's
    # slot in the scheduler, and in what run() keeps per rank, is its place here.
    running: list[int]

    @property
    def device(self) -> str: ...

    _native: Any  # the world's WorldState

    @property
    def spec(self) -> Any: ...  # the world's WorldSpec

    def _rank_program(self, rank: int, first_group: int) -> contextlib.AbstractContextManager[None]: ...

    def _deadlock_report(self, since: list[int]) -> str: ...

    def _switch_to(self, rank: int) -> None: ...

    def _reword(self, exc: BaseException, since: list[int]) -> None: ...

    # Set by ``run`` for its length: ``_stop(rank, exc)`` ends the run with
    # ``exc`` as if ``rank`` had raised it, while that rank's program goes on.
    _stop: Callable[[int, BaseException], None] | None


class _CudaRng:
    """What a separate process would keep to itself and torch keeps neither
    per thread nor in module-level Python state (NOTE [Per-rank process
    state] covers that): its CUDA generators, once initialised. Captured
    when a rank stops running, loaded for the next. The CPU generator is
    swapped by the scheduler itself (NOTE [The baton])."""

    __slots__ = ("cuda",)

    def __init__(self) -> None:
        import torch

        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    def restore(self) -> None:
        import torch

        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


class _Pool:
    """Threads that run ranks 1, 2, ... of exact worlds, kept between runs:
    starting a thread costs more than a whole trivial rank program. Rank 0
    runs on the caller's thread. A pooled thread sleeps on its own gate (a
    native semaphore) until the baton reaches its rank, so a run wakes each
    thread once, when its rank first runs, and never all of them at once."""

    def __init__(self) -> None:
        self.threads: list[_RankThread] = []
        self.lock = threading.Lock()

    def take(self, ranks: int) -> list[_RankThread]:
        """Threads for ranks 1 to ``ranks - 1``, each waiting on its gate."""
        with self.lock:
            while len(self.threads) < ranks - 1:
                self.threads.append(_RankThread())
            return self.threads[: ranks - 1]


class _RankThread:
    """One pooled thread: runs the job it was given each time its gate opens
    (a gate left open by a stopped run finds no job, and waits again). Each
    job begins with the caller's grad mode and default device, which torch
    keeps per thread: a job must not inherit the last one's."""

    def __init__(self) -> None:
        from .. import _backend

        self.gate = _backend.load().Gate()
        self.job: tuple[Callable[[], None], tuple[bool, Any]] | None = None
        self.ident = 0  # the thread's, once it runs
        parked = threading.Event()
        threading.Thread(target=self._serve, args=(parked,), name="fakepg-rank", daemon=True).start()
        parked.wait()  # else its first Python would wait out a running rank's switch interval

    def _serve(self, parked: threading.Event) -> None:
        self.ident = threading.get_ident()
        parked.set()
        while True:
            self.gate.wait()
            given, self.job = self.job, None
            if given is None:
                continue
            job, context = given
            _set_grad_and_device(context)
            # Backward on this thread, never on the autograd engine's device
            # threads, which every rank would share (and where a collective in
            # a backward hook could not wait for the others).
            _compat.runtime.set_autograd_threads(False)
            try:
                job()
            finally:
                # A parked thread holds nothing of the run it served: its
                # program and what it returned go with the world.
                del given, job, context


_POOL = _Pool()


@contextlib.contextmanager
def _as_rank_thread(context: tuple[bool, Any]) -> Any:
    """Rank 0 runs on the caller's thread: what torch keeps per thread and a
    rank program may change (grad mode, default device, autograd's
    multithreading) is the caller's ``context`` again afterwards."""

    threads = _compat.runtime.autograd_threads()
    _compat.runtime.set_autograd_threads(False)
    try:
        yield
    finally:
        _compat.runtime.set_autograd_threads(threads)
        _set_grad_and_device(context)


def run(world: Ranks, program: Callable[[int], Any], first_group: int) -> list[Any]:
    """``program(rank)`` on every running rank of ``world``, each rank naming
    its groups from ``first_group`` on; the results in rank order."""
    __tracebackhide__ = True
    return _Run(world, program, first_group).run()


class _ProcessState:
    """What a separate process would keep to itself and the ranks' threads
    share, kept per rank: it leaves with a rank at a switch and enters with
    the next (NOTE [The baton]). The CUDA generators (the CPU one the
    scheduler swaps itself), torch's module-level state (NOTE [Per-rank
    process state]), Python's ``random`` and torchrun's variables. Every
    rank starts from the caller's; ``finish`` gives the caller its own back."""

    def __init__(self, world: Ranks, n: int) -> None:
        if world.device == "cuda":
            import torch

            torch.cuda.init()  # so every rank's CUDA generator is saved from the start
        self.world = world
        self.caller = _CudaRng()
        self.cuda = [self.caller] * n  # every rank starts where the caller's streams are
        self.views = process_state.RankViews(n, world.spec.per_rank_modules)
        self.random = _compat.stdlib.RandomPerRank(n)
        self.excepthook = _compat.stdlib.excepthook()  # init_process_group, making a rank's group, wraps it

    def leave(self, slot: int) -> None:
        self.cuda[slot] = _CudaRng()
        self.views.leave(slot)

    def enter(self, slot: int) -> None:
        self.cuda[slot].restore()
        self.views.enter(slot)
        self.random.load(slot)
        self.world._switch_to(self.world.running[slot])

    def finish(self) -> None:
        self.caller.restore()
        self.views.finish()
        self.random.restore()
        _compat.stdlib.set_excepthook(self.excepthook)


class _Run:
    """One run of an exact world's ranks. Below, a rank is a slot: its
    place among the running ranks (``world.running``)."""

    def __init__(self, world: Ranks, program: Callable[[int], Any], first_group: int) -> None:
        self.world, self.program, self.first_group = world, program, first_group
        self.native, self.ranks = world._native, world.running
        self.results: list[Any] = [None] * len(self.ranks)
        self.failures: list[tuple[int, BaseException]] = []
        self.stopped = threading.Event()
        self.holder = 0  # the slot holding the baton, as of the last switch
        self.caller = threading.get_ident()
        self.threads: list[_RankThread] = []

    def switch(self, old: int, new: int) -> None:
        """The scheduler's hook: slot ``old`` (-1: it finished) stops
        running and ``new`` starts."""
        self.holder = new
        if old >= 0:
            self.state.leave(old)
        self.state.enter(new)

    def stop(self, rank: int, exc: BaseException) -> None:
        """The run ends with ``exc``, raised by (or for) global rank
        ``rank``: the other ranks are stopped, unless the run already ended."""
        if not self.stopped.is_set() and not self.native.deadlocked():
            self.stopped.set()
            self.failures.append((rank, exc))
            self.native.abort(
                f"fakepg: rank {rank} raised {type(exc).__name__}, which {ABORTED} "
                "(on a cluster the other ranks would hang or be killed)"
            )
            self.interrupt_the_running_rank(self.ranks.index(rank))

    def interrupt_the_running_rank(self, slot: int) -> None:
        """NOTE [Signals in exact worlds] (csrc/exact.cpp): a stop that did
        not come from the rank holding the baton (a signal handler that raised
        in rank 0's thread while another rank ran) raises RankStopped in that
        rank's thread, which may be running Python that never waits. It takes
        effect at the thread's next bytecode (a C call it is in, such as a
        sleep, ends first)."""
        holder = self.holder
        if holder < 0 or holder == slot:
            return
        ident = self.caller if holder == 0 else self.threads[holder - 1].ident
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(RankStopped))

    def body(self, slot: int) -> None:
        """Slot ``slot``'s program, on its thread."""
        native, rank = self.native, self.ranks[slot]
        try:
            if native.enter(slot):
                try:
                    with self.world._rank_program(rank, self.first_group):
                        self.results[slot] = self.program(rank)
                except BaseException as exc:  # noqa: BLE001 - re-raised by the caller
                    self.stop(rank, exc)
                finally:
                    native.leave(slot)
        finally:
            native.ended(slot)  # last: the caller goes on once every rank has

    def run(self) -> list[Any]:
        __tracebackhide__ = True
        world, native, n = self.world, self.native, len(self.ranks)
        _compat.c10d.quiet_backend_error_logs()
        self.state = _ProcessState(world, n)
        since = [native.size_of(r) for r in self.ranks]  # this run's records come after
        self.threads = _POOL.take(n)
        # Before any thread is given its job: a thread woken by a wake-up left
        # from a stopped run must find this run's state, not that run's.
        native.start_run([_caller_gate(), *(t.gate for t in self.threads)])
        context = _grad_and_device()
        for slot, thread in enumerate(self.threads, start=1):
            thread.job = (functools.partial(self.body, slot), context)
        native.set_switch_hook(self.switch)
        world._stop = self.stop
        try:
            self.state.enter(0)
            with _as_rank_thread(context):
                self.body(0)
            try:
                while not native.finish():  # a signal: Python's handlers run here
                    pass
            except BaseException:  # Ctrl-C, a timeout, while the other ranks run: stop them first
                self.stopped.set()
                native.abort(f"fakepg: an interrupt {ABORTED}")
                self.interrupt_the_running_rank(-1)
                while not native.finish():
                    pass
                raise
        finally:
            world._stop = None
            native.set_switch_hook(None)
            native.restore_caller_rng()
            self.state.finish()
        if native.deadlocked():
            raise FakeWorldDeadlock(world._deadlock_report(since))
        if self.failures:
            rank, exc = self.failures[0]
            world._reword(exc, since)
            if isinstance(exc, Exception) and hasattr(exc, "add_note"):
                exc.add_note(f"(raised by rank {rank} of an exact fake world of {world.world_size}; "
                             "the other ranks were stopped)")
            raise exc
        return self.results


def _grad_and_device() -> tuple[bool, Any]:
    """What torch keeps per thread that a rank's thread takes from the caller."""
    import torch

    return torch.is_grad_enabled(), _compat.runtime.default_device()


def _set_grad_and_device(context: tuple[bool, Any]) -> None:
    import torch

    grad, device = context
    if torch.is_grad_enabled() != grad:
        torch.set_grad_enabled(grad)
    if _compat.runtime.default_device() != device:
        torch.set_default_device(device)


_CALLER_GATES = threading.local()

# What every message that stops a run says; c10d's exception logger drops
# its records of the calls a stop made raise (_compat.c10d.quiet_backend_error_logs).
ABORTED = "stopped the exact world"


def _caller_gate() -> Any:
    """The gate rank 0 (the caller's thread) waits on, one per calling thread."""
    gate = getattr(_CALLER_GATES, "gate", None)
    if gate is None:
        from .. import _backend

        gate = _CALLER_GATES.gate = _backend.load().Gate()
    return gate
