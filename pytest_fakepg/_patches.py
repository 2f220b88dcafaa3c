"""Replacing names while a world is up, and putting back exactly what was
there: the one way a world patches torch (NOTE [Patches]); and the patches
every world installs (object collectives, batch markers, sequence numbers),
which find the running world when called."""

from __future__ import annotations

import functools
import types
from collections.abc import Callable
from typing import Any

# NOTE [Patches]
# A patch is (owner, {name: replacement}): a module's namespace, a class, or
# a function (its ``__code__`` and defaults: NOTE [Initialisation on fake
# tensors]). ``install`` applies a list in order and returns what it saved;
# ``remove`` puts it back in reverse order, and leaves a name alone that
# someone replaced again meanwhile (their replacement is theirs to undo). A
# name a module did not have is deleted again.

Patch = tuple[Any, dict[str, Any]]
Saved = list[tuple[Any, dict[str, Any], dict[str, Any]]]
_ABSENT = object()


def install(patches: list[Patch]) -> Saved:
    saved: Saved = []
    for owner, replacements in patches:
        saved.append((owner, {name: getattr(owner, name, _ABSENT) for name in replacements}, replacements))
        if isinstance(owner, types.ModuleType):
            vars(owner).update(replacements)  # one dict update, not a setattr each
        else:
            for name, replacement in replacements.items():
                setattr(owner, name, replacement)
    return saved


def remove(saved: Saved) -> None:
    for owner, originals, replacements in reversed(saved):
        if isinstance(owner, types.ModuleType):
            space = vars(owner)
            for name, original in originals.items():
                if space.get(name, _ABSENT) is replacements[name]:
                    if original is _ABSENT:
                        del space[name]
                    else:
                        space[name] = original
            continue
        for name, original in originals.items():
            if getattr(owner, name, _ABSENT) is replacements[name]:
                setattr(owner, name, original)


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
