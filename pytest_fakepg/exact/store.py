"""The store of an exact world.

NOTE [Store waits are turns]
On a cluster, rank 0's ``store.get("ready")`` returns once rank 1 has run
``store.set("ready", ...)``. In an exact world one rank runs at a time, so a
rank that waited on the store in place would keep the turn, and rank 1 would
never run: the test hung until the store's timeout. Here the world's store
(``world.store``, the ``fake_store`` fixture, and the store behind every
group) is a ``torch.distributed.Store`` of this package around a
``HashStore``: a ``get``, ``wait`` or ``multi_get`` of a key that is not set
yet hands the turn on (``Scheduler::blockUntil``), as a collective that
waits for the other ranks does, and the rank runs again once the key is set.
A wait that no rank will ever answer is a deadlock like any other: it fails
at once, naming the keys, each rank's pending call and its line. Outside a
rank's own thread (a fixture, a thread the rank started), a wait is the
``HashStore``'s own, with its timeout.
"""

from __future__ import annotations

from typing import Any, Protocol

_STORE_CLASS: type | None = None


class Turns(Protocol):
    """What the store asks of the exact world it serves (exact/world.py)."""

    _native: Any  # the world's WorldState, whose scheduler hands turns on

    def _own_thread_rank(self) -> int | None: ...

    def _site_of_caller(self) -> int: ...


def exact_store(world: Turns) -> Any:
    """A store for ``world`` whose waits are turns (see the NOTE)."""
    global _STORE_CLASS
    if _STORE_CLASS is None:
        _STORE_CLASS = _make_class()
    return _STORE_CLASS(world)


def _make_class() -> type:
    import torch.distributed as dist

    class ExactStore(dist.Store):
        """An exact world's store: a ``HashStore`` whose waits are turns
        (NOTE [Store waits are turns])."""

        def __init__(self, world: Turns) -> None:
            super().__init__()
            self._inner = dist.HashStore()
            self._world = world

        def _wait_for(self, keys: list[str], call: str) -> None:
            rank = self._world._own_thread_rank()
            missing = rank is not None and not self._inner.check(keys)
            if not missing:
                return
            site = self._world._site_of_caller()
            self._world._native.wait_for_keys(rank, self._inner, list(keys), f"{call}\x1f\x1f{site}")

        def set(self, key: str, value: Any) -> None:
            self._inner.set(key, value)

        def get(self, key: str) -> bytes:
            self._wait_for([key], f"store get({key!r})")
            return self._inner.get(key)

        def wait(self, keys: list[str], timeout: Any = None) -> None:
            self._wait_for(keys, f"store wait({list(keys)!r})")
            if timeout is None:
                self._inner.wait(keys)
            else:
                self._inner.wait(keys, timeout)

        def multi_get(self, keys: list[str]) -> list[bytes]:
            self._wait_for(keys, f"store multi_get({list(keys)!r})")
            return self._inner.multi_get(keys)

        def multi_set(self, keys: list[str], values: list[Any]) -> None:
            self._inner.multi_set(keys, values)

        def add(self, key: str, amount: int) -> int:
            return self._inner.add(key, amount)

        def append(self, key: str, value: Any) -> None:
            self._inner.append(key, value)

        def compare_set(self, key: str, expected: Any, desired: Any) -> bytes:
            return self._inner.compare_set(key, expected, desired)

        def check(self, keys: list[str]) -> bool:
            return self._inner.check(keys)

        def delete_key(self, key: str) -> bool:
            return self._inner.delete_key(key)

        def num_keys(self) -> int:
            return self._inner.num_keys()

        def has_extended_api(self) -> bool:
            return True

        def clone(self) -> Any:
            return self  # one process: a second connection is the same store

    return ExactStore
