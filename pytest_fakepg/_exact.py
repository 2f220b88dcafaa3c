"""Running an exact world's ranks: one thread per rank, one rank at a time.

NOTE [Exact worlds] (csrc/exact.cpp) says how collectives meet; NOTE [The
baton] (csrc/exact.hpp) how ranks take turns. This module starts the rank
threads, gives each rank the per-process state a separate process would have
(the RNG streams, DTensor's RNG tracker) at each switch, and turns the way a
run ended into one error: the first rank's exception, or a deadlock report.
"""

from __future__ import annotations

import functools
import queue
import random
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _compat

if TYPE_CHECKING:
    from .world import FakeWorld

_NOT_STARTED, _RUNNABLE, _WAITING, _FINISHED = range(4)


class _RankState:
    """What a separate process would keep to itself and is process-wide here:
    torch's CPU (and, once initialised, CUDA) generators and DTensor's RNG
    tracker. Captured when a rank stops running, loaded for the next."""

    __slots__ = ("cpu", "cuda", "tracker")

    def __init__(self) -> None:
        import torch

        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        self.tracker = _compat.dtensor_rng_tracker()

    def restore(self) -> None:
        import torch

        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)
        _compat.set_dtensor_rng_tracker(self.tracker)


class _PythonRandom:
    """Python's ``random`` per rank: each rank draws from its own
    ``random.Random``, a copy of the caller's, whose methods are swapped into
    the module at each switch (cheaper than getstate/setstate)."""

    def __init__(self, ranks: int) -> None:
        caller = random._inst  # type: ignore[attr-defined]
        self.module = vars(random)
        self.caller = {n: f for n, f in self.module.items() if getattr(f, "__self__", None) is caller}
        state = caller.getstate()
        self.ranks = []
        for _ in range(ranks):
            inst = random.Random.__new__(random.Random)  # not seeded: setstate sets it all
            inst.setstate(state)
            self.ranks.append({n: getattr(inst, n) for n in self.caller})

    def load(self, rank: int) -> None:
        self.module.update(self.ranks[rank])

    def restore(self) -> None:
        self.module.update(self.caller)


class _Pool:
    """Threads that run ranks, kept between runs: starting a thread costs more
    than a whole trivial rank program. Each thread runs one rank's job at a
    time and begins every job with the caller's grad mode and default device
    (torch keeps both per thread; a job must not inherit the last one's)."""

    def __init__(self) -> None:
        self.idle: list[queue.SimpleQueue[Any]] = []
        self.lock = threading.Lock()

    def submit(self, jobs: list[Callable[[], None]]) -> threading.Semaphore:
        """Start every job, each on its own thread. The semaphore is released
        once, when every job has finished and its thread is idle again."""
        import torch

        context = (torch.is_grad_enabled(), torch.get_default_device())
        batch = _Batch(len(jobs))
        with self.lock:
            while len(self.idle) < len(jobs):
                inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
                threading.Thread(target=self._serve, args=(inbox,), name="fakepg-rank", daemon=True).start()
                self.idle.append(inbox)
            taken, self.idle = self.idle[: len(jobs)], self.idle[len(jobs):]
        for inbox, job in zip(taken, jobs):
            inbox.put((job, context, batch))
        return batch.finished

    def _serve(self, inbox: queue.SimpleQueue[Any]) -> None:
        import torch

        while True:
            job, (grad, device), batch = inbox.get()
            torch.set_grad_enabled(grad)
            # Backward on this thread, never on the autograd engine's device
            # threads, which every rank would share (and where a collective in
            # a backward hook could not wait for the others).
            torch._C._set_multithreading_enabled(False)
            if torch.get_default_device() != device:
                torch.set_default_device(device)
            try:
                job()
            finally:
                with self.lock:
                    self.idle.append(inbox)
                    batch.left -= 1
                    last = batch.left == 0
                if last:
                    batch.finished.release()


class _Batch:
    __slots__ = ("left", "finished")

    def __init__(self, jobs: int) -> None:
        self.left = jobs
        self.finished = threading.Semaphore(0)


_POOL = _Pool()


def run(world: FakeWorld, program: Callable[[int], Any]) -> list[Any]:
    """``program(rank)`` on every rank of ``world``; the results by rank."""
    __tracebackhide__ = True
    from . import world as world_module

    native, n = world._native, world.world_size
    if world.device == "cuda":
        import torch

        torch.cuda.init()  # so every rank's CUDA generator is saved from the start
    entry = _RankState()
    states = [entry] * n  # every rank starts where the caller's streams are
    python_random = _PythonRandom(n)
    results: list[Any] = [None] * n
    failures: list[tuple[int, BaseException]] = []
    stopped = threading.Event()

    def switch(old: int, new: int) -> None:
        if old >= 0:
            states[old] = _RankState()
        states[new].restore()
        python_random.load(new)

    def body(rank: int) -> None:
        if not native.enter(rank):
            return
        try:
            with world._rank_program(rank, first_group):
                results[rank] = program(rank)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the caller
            if not stopped.is_set() and not native.deadlocked():
                stopped.set()
                failures.append((rank, exc))
                native.abort(
                    f"fakepg: rank {rank} raised {type(exc).__name__}, which stopped the "
                    "exact world (on a cluster the other ranks would hang or be killed)"
                )
        finally:
            native.leave(rank)

    first_group = world_module._next_group_number
    since = [native.size_of(r) for r in range(n)]  # this run's records come after
    native.start_run()
    native.set_switch_hook(switch)
    try:
        python_random.load(0)
        native.go()  # rank 0 first; a rank whose thread is not yet waiting finds the baton when it is
        finished = _POOL.submit([functools.partial(body, r) for r in range(n)])
        try:
            finished.acquire()
        except BaseException:  # Ctrl-C while the ranks run: stop them first
            native.abort("fakepg: the exact world was interrupted")
            finished.acquire()
            raise
    finally:
        native.set_switch_hook(None)
        entry.restore()
        python_random.restore()
    if native.deadlocked():
        from .world import FakeWorldDeadlock

        raise FakeWorldDeadlock(deadlock_report(world, since))
    if failures:
        rank, exc = failures[0]
        if isinstance(exc, Exception) and hasattr(exc, "add_note"):
            exc.add_note(f"(raised by rank {rank} of an exact fake world of {n}; the other ranks were stopped)")
        raise exc
    return results


def deadlock_report(world: FakeWorld, since: list[int]) -> str:
    """Each rank's pending call (op, group, line) and, where the collectives
    the ranks issued disagree, the divergence, as the check across ranks words
    it."""
    from . import consistency

    native = world._native
    labels = world.group_labels()
    sites = world.call_sites()
    lines = ["no rank can run: each waits for a call another rank never makes (on a cluster, a hang)"]
    for rank, (state, waiting) in enumerate(zip(native.rank_states(), native.waiting())):
        if state == _WAITING and waiting:
            op, group, site = waiting.decode().split("\x1f")
            where = f" at {sites[int(site)]}" if 0 <= int(site) < len(sites) else ""
            label = labels.get(group, "")
            named = label if label and label != "undefined" else f"'{group}'"
            lines.append(f"  rank {rank} waits in {op} on group {named}{where}")
        elif state == _FINISHED:
            lines.append(f"  rank {rank} finished its program")
        elif state == _NOT_STARTED:
            lines.append(f"  rank {rank} never started")
    divergence = consistency.check(consistency.exact_traces(world, since)) if world.spec.record else None
    if divergence:
        lines.append(divergence)
    return "\n".join(lines)
