"""The patches every world installs (object collectives, batch markers,
sequence numbers), which find the running world when called; installed and
removed as every patch is (NOTE [Patches], _compat/patching.py)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any


# -- what every world patches ---------------------------------------------------------


@functools.cache
def object_collectives(running: Callable[[], Any]) -> tuple[tuple[Any, dict[str, Any]], ...]:
    """(module, {name: replacement}) for torch.distributed's object
    collectives, in both modules that export them: NOTE [Objects this rank
    cannot know]. Made once per process; they find the running world
    (``running()``) when called."""
    import torch.distributed as dist

    from . import _objects

    c10d = dist.distributed_c10d
    replacements = _objects.make({name: getattr(c10d, name) for name in _objects.NAMES},
                                 lambda: None if running() is None else running().native)
    return (dist, replacements), (c10d, replacements)


@functools.cache
def batch_markers(running: Callable[[], Any]) -> tuple[tuple[Any, dict[str, Any]], ...]:
    """``batch_isend_irecv`` in both modules that export it, noting which of
    the running world's records one batch issued: a batch is one coalesced
    group in NCCL's Flight Recorder, as the dumps write it (checks/
    flight_recorder.py). Made once per process; finds the running world
    when called."""
    import torch.distributed as dist

    c10d = dist.distributed_c10d
    original = c10d.batch_isend_irecv

    @functools.wraps(original)
    def batch_isend_irecv(p2p_op_list: list[Any]) -> list[Any]:
        up = running()
        if up is None:
            return original(p2p_op_list)
        world, native = up.world, up.native
        rank = world._calling_rank()
        first = native.size_of(rank)
        works = original(p2p_op_list)
        end = native.size_of(rank)
        if end - first > 1:
            world.batches.append((rank, first, end))
        return works

    replacements = {"batch_isend_irecv": batch_isend_irecv}
    return (dist, replacements), (c10d, replacements)


@functools.cache
def sequence_numbers() -> tuple[Any, dict[str, Any]]:
    """``ProcessGroup._get_sequence_number_for_group`` that answers for
    fakepg groups too: NOTE [Sequence numbers of custom backends]."""
    from . import _backend, _compat

    return _compat.c10d.sequence_numbers_for(_backend.load().FakeBackend)
