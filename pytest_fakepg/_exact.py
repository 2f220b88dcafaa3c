"""Running an exact world's ranks: one thread per rank, one rank at a time.

NOTE [Exact worlds] (csrc/exact.cpp) says how collectives meet; NOTE [The
baton] (csrc/exact.hpp) how ranks take turns. This module starts the rank
threads, gives each rank the per-process state a separate process would have
(the RNG streams, DTensor's RNG tracker) at each switch, and turns the way a
run ended into one error: the first rank's exception, or a deadlock report.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _compat

if TYPE_CHECKING:
    from .world import FakeWorld

_NOT_STARTED, _RUNNABLE, _WAITING, _FINISHED = range(4)


class _RankState:
    """What a separate process would keep to itself: torch's CPU (and, once
    initialised, CUDA) generators, Python's ``random`` and DTensor's RNG
    tracker. Captured when a rank stops running, restored when it resumes."""

    __slots__ = ("cpu", "cuda", "python", "tracker")

    def __init__(self) -> None:
        import torch

        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        self.python = random.getstate()
        self.tracker = _compat.dtensor_rng_tracker()

    def restore(self) -> None:
        import torch

        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)
        random.setstate(self.python)
        _compat.set_dtensor_rng_tracker(self.tracker)


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
    results: list[Any] = [None] * n
    failures: list[tuple[int, BaseException]] = []
    stopped = threading.Event()

    def switch(rank: int, resuming: bool) -> None:
        if resuming:
            states[rank].restore()
        else:
            states[rank] = _RankState()

    def body(rank: int) -> None:
        if not native.enter(rank):
            return
        try:
            states[rank].restore()
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
    threads = [threading.Thread(target=body, args=(r,), name=f"fakepg-rank-{r}", daemon=True) for r in range(n)]
    try:
        for t in threads:
            t.start()
        try:
            for t in threads:
                t.join()
        except BaseException:  # Ctrl-C while the ranks run: stop them first
            native.abort("fakepg: the exact world was interrupted")
            for t in threads:
                t.join()
            raise
    finally:
        native.set_switch_hook(None)
        entry.restore()
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
