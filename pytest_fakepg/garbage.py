"""Cycles a world made, collected as it goes down (NOTE [A world's garbage goes with it])."""

from __future__ import annotations

import gc


def fence() -> str:
    """NOTE [A world's garbage goes with it]
    torch's distributed objects make reference cycles (an FSDP2 module and
    its state and hooks, autograd graphs through them, DTensor specs), which
    only Python's cycle collector frees, whenever it next runs: in a later
    test, inside its world, where the frees land in that test's memory
    figures and its timing. So a world collects its own garbage as it goes
    down. To cost what the world made rather than the whole process, the
    objects that exist when it comes up are set aside (``gc.freeze``) for its
    length and put back after the collection; a cycle made before the world
    is therefore collected only after it, not inside it. Where the program
    set objects aside itself (a freeze count above 0: some environments do
    at start), putting back would undo its freeze, so the world collects the
    whole process instead, slower. Nothing is collected where the collector
    is off. Returns how the world collects: "fenced", "whole" or "off"."""
    if not gc.isenabled():
        return "off"
    if gc.get_freeze_count():
        return "whole"
    gc.freeze()
    return "fenced"


def collect(how: str) -> None:
    """Free the cycles the world left (``how``: what ``fence`` returned),
    and put back what it set aside."""
    if how == "off":
        return
    # Freeing a cycle runs weakref callbacks and finalizers, which can
    # let go of other cycles: collect until nothing more is found.
    for _ in range(4):
        if not gc.collect():
            break
    if how == "fenced":
        gc.unfreeze()
