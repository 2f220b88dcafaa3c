"""Faults armed in a world: what ``fail=`` and ``FakeWorld.fail()`` give."""

from __future__ import annotations

from typing import Any

from .ops import ALL_OPS, op_code
from .spec import FaultSpec


class Fault:
    """An armed fault. ``disarm()`` it, or use it as a context manager."""

    __slots__ = ("_world", "_ids", "_calls_before", "_reported", "spec")

    def __init__(self, world: Any, ids: list[tuple[int, int]], spec: FaultSpec) -> None:
        self._world = world  # the FakeWorld that armed it (not imported: world.py imports this)
        self._ids = ids  # (rank it fires on or -1 for any, native id)
        native = world._native
        self._calls_before = [native.call_count(op_code(spec.op), rank) for rank, _ in ids]
        self._reported = False
        self.spec = spec

    def disarm(self) -> None:
        """Disarm the fault (a no-op once it fired, if it was one-shot).
        Raises RuntimeError once its world is down."""
        native = self._world._live_native("Fault.disarm()")
        for _, fault_id in self._ids:
            native.disarm_fault(fault_id)
        self._reported = True  # disarmed on purpose: nothing to report

    def _never_fired(self) -> str | None:
        """Why this fault is a test that tested nothing, or None."""
        if self._reported:
            return None
        native, spec = self._world._native, self.spec
        op = "any collective" if spec.op == ALL_OPS else spec.op
        for (rank, fault_id), before in zip(self._ids, self._calls_before):
            on = "" if rank < 0 else f" on rank {rank}"
            calls = native.call_count(op_code(spec.op), rank)
            if spec.nth is not None:
                if not native.is_armed(fault_id):
                    continue
                made = f"{calls} call{'s' if calls != 1 else ''} of {op} {'was' if calls == 1 else 'were'} made"
                return f"the fault armed for call {spec.nth} of {op}{on} never fired: {made}"
            if calls == before:
                return (
                    f"the fault armed for every call of {op}{on} never fired: no call of "
                    f"{op} was made after it was armed"
                )
        return None

    def __enter__(self) -> Fault:
        return self

    def __exit__(self, *exc: object) -> None:
        self.disarm()

    def __repr__(self) -> str:
        nth = "" if self.spec.nth is None else f", nth={self.spec.nth}"
        return f"<Fault {self.spec.op!r}{nth} at={self.spec.at!r}>"
