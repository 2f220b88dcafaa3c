"""The store of a fake world: ``world.store``, the ``fake_store`` fixture and
the store behind every group. A ``torch.distributed.Store`` of this package
around a ``HashStore``, whose waits for a key not set yet ask the world what
to do (``FakeWorld._store_wait``): a rank that runs alone cannot wait for
another rank to set it.

NOTE [A store wait in a uniform world]
In a uniform (or copy) world only this rank runs, so a ``get``, ``wait`` or
``multi_get`` of a key that this rank has not set can never succeed: no other
rank exists to set it. A HashStore would wait out its timeout (300 s by
default) in C++, where neither Ctrl-C nor pytest-timeout can end it. Here it
fails at once with a ``DistStoreError`` naming the keys, the line, and what to
do instead (set the key in the test, or run every rank with
``values="exact"``).

NOTE [Store waits are turns]
On a cluster, rank 0's ``store.get("ready")`` returns once rank 1 has run
``store.set("ready", ...)``. In an exact world one rank runs at a time, so a
rank that waited on the store in place would keep the turn, and rank 1 would
never run. There a wait for a key not set yet hands the turn on
(``Scheduler::blockUntil``), as a collective that waits for the other ranks
does, and the rank runs again once the key is set. A wait no rank will ever
answer times out in its rank, with the store's own error, which the program
may catch (NOTE [A store wait times out], csrc/exact.cpp). Outside a rank's
own thread (a fixture, a thread the rank started), a wait polls the
``HashStore`` until its timeout, in Python, so pytest-timeout and Ctrl-C can
end it.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any, Protocol

_STORE_CLASS: type | None = None
# How often a wait outside the ranks looks at the store again.
_POLL_S = 0.05


class Waits(Protocol):
    """What the store asks of the world it serves (world.py, exact/world.py)."""

    def _store_wait(self, store: Any, keys: list[str], call: str, timeout: timedelta | None) -> None: ...


def world_store(world: Waits) -> Any:
    """A store for ``world``, whose waits for a missing key ask ``world``."""
    global _STORE_CLASS
    if _STORE_CLASS is None:
        _STORE_CLASS = _make_class()
    return _STORE_CLASS(world)


def poll(store: Any, keys: list[str], timeout: timedelta | None, call: str) -> None:
    """Wait for ``keys`` in ``store`` until ``timeout`` (the store's own if
    None), looking every 50 ms, so a signal handler can end the wait; then
    raise the store's timeout error."""
    import torch.distributed as dist

    limit = (timeout if timeout is not None else store.timeout).total_seconds()
    deadline = time.monotonic() + limit
    while not store.inner.check(keys):
        if time.monotonic() >= deadline:
            raise dist.DistStoreError(f"{call} timed out after {limit:g} s: the key was never set")
        time.sleep(_POLL_S)


def _make_class() -> type:
    import torch.distributed as dist

    class WorldStore(dist.Store):
        """A fake world's store: a ``HashStore`` whose waits for a missing
        key ask the world (see the NOTEs above)."""

        def __init__(self, world: Waits) -> None:
            super().__init__()
            self._inner = dist.HashStore()
            self._world = world

        def _wait_for(self, keys: list[str], call: str, timeout: timedelta | None = None) -> None:
            if not self._inner.check(keys):
                self._world._store_wait(self, list(keys), call, timeout)

        def set(self, key: str, value: Any) -> None:
            self._inner.set(key, value)

        def get(self, key: str) -> bytes:
            self._wait_for([key], f"store get({key!r})")
            return self._inner.get(key)

        def wait(self, keys: list[str], timeout: Any = None) -> None:
            self._wait_for(keys, f"store wait({list(keys)!r})", timeout)

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

        @property
        def inner(self) -> Any:
            """The HashStore holding the keys."""
            return self._inner

    return WorldStore
