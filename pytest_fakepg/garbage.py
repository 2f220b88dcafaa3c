"""Cycles a world made, collected as it goes down (NOTE [A world's garbage goes with it])."""

from __future__ import annotations

import gc


def fence() -> bool:
    """NOTE [A world's garbage goes with it]
    torch's distributed objects make reference cycles (an FSDP2 module and
    its state and hooks, autograd graphs through them, DTensor specs), which
    only Python's cycle collector frees, whenever it next runs: in a later
    test, inside its world, where the frees land in that test's memory
    figures and its timing. So a world collects its own garbage as it goes
    down. To cost what the world made rather than the whole process, the
    objects that exist when it comes up are set aside (``gc.freeze``) for its
    length and put back after the collection. A cycle made before the world
    is therefore collected only after it, not inside it. Nothing is set
    aside where the collector is off or the program froze objects itself.
    Returns whether objects were set aside."""
    if not gc.isenabled() or gc.get_freeze_count():
        return False
    gc.freeze()
    return True


def collect(fenced: bool) -> None:
    """Free the cycles the world left, and put back what ``fence``
    set aside."""
    if fenced:
        # Freeing a cycle runs weakref callbacks and finalizers, which can
        # let go of other cycles: collect until nothing more is found.
        for _ in range(4):
            if not gc.collect():
                break
        gc.unfreeze()
