"""The default group of a fakepg world, made directly once torch's own way is
known to give the same group.

NOTE [The default group made directly]
torch's ``init_process_group`` spends most of its time (about 150 us here,
twice that on a rank's thread) in logging, checks and options that a fake
world never varies, and every test makes one default group per rank. The
calls it makes for a backend of our own are made directly instead
(``_compat.c10d.make_default_group``), checked once per process, not
trusted: the first default group of each world size is torch's own, and the
next is made directly and compared with it (every ``_World`` property, the
group's own state and c10d's module globals:
``_compat.c10d.default_group_state``). Equal: made directly from then on.
Different, or a name missing: undone and made by torch, and by torch from
then on. Unlike torch's, it does not wrap ``sys.excepthook``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._compat import c10d

# The parts, by name, so a test can stand in for one.
make_default_group = c10d.make_default_group

_DIRECT_GROUPS: bool | None = None  # None: not checked yet
_TORCHS_DEFAULT_GROUP: dict[int, Any] = {}  # world size -> c10d.default_group_state() of torch's own


def init_default_group(backend: str, rank: int, world_size: int, store: Any,
                       make_backend: Callable[[int, int, str], Any]) -> None:
    """``init_process_group`` for ``backend``, ``make_backend(rank, size,
    name)`` making its backend: see the NOTE above."""
    global _DIRECT_GROUPS
    import torch.distributed as dist

    if _DIRECT_GROUPS is False or (_DIRECT_GROUPS is None and world_size not in _TORCHS_DEFAULT_GROUP):
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, store=store)
        if _DIRECT_GROUPS is None and world_size <= 1024:  # its state holds a dict of every rank
            _TORCHS_DEFAULT_GROUP[world_size] = c10d.default_group_state()
        return
    if _DIRECT_GROUPS:
        make_default_group(backend, rank, world_size, store, make_backend)
        return
    count = c10d.group_count()
    try:
        make_default_group(backend, rank, world_size, store, make_backend)
        same = c10d.default_group_state() == _TORCHS_DEFAULT_GROUP[world_size]
    except Exception:  # noqa: BLE001 - a name this torch lacks: torch's way from now on
        same = False
    _DIRECT_GROUPS = same
    if not same:
        c10d.undo_default_group(count)
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, store=store)
