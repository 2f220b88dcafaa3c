"""Replacing names while a world is up, and putting back exactly what was
there: the one way a world patches torch (NOTE [Patches])."""

from __future__ import annotations

import types
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
