"""NOTE [Patches]
The one way the package replaces a name of torch, pytest or the standard
library, and puts back exactly what was there. A patch is (owner, {name:
replacement}): a module's namespace, a class, an instance, or a function
(its ``__code__`` and defaults: NOTE [Initialisation on fake tensors]).
``install`` applies a list in order and returns what it saved; ``remove``
puts it back in reverse order, and leaves a name alone that someone
replaced again meanwhile (their replacement is theirs to undo). What an
owner held itself is saved, not what it inherited: a name it did not have
(a class's inherited method, an instance's method, a module's missing
global) is deleted again, so nothing of a patch outlives it.
tests/test_private_api.py finds a private name patched anywhere else.
"""

from __future__ import annotations

import types
from typing import Any

Patch = tuple[Any, dict[str, Any]]
Saved = list[tuple[Any, dict[str, Any], dict[str, Any]]]
_ABSENT = object()
# Patches installed and not yet removed, for ``installed()``.
_LIVE: set[int] = set()


def installed() -> int:
    """How many lists of patches are installed now (0 outside any world)."""
    return len(_LIVE)


def _own(owner: Any, name: str) -> Any:
    """What ``owner`` holds under ``name`` itself, or _ABSENT."""
    if isinstance(owner, types.FunctionType) or not hasattr(owner, "__dict__"):
        return getattr(owner, name, _ABSENT)  # a function's code and defaults are no __dict__ entries
    return vars(owner).get(name, _ABSENT)


def install(patches: list[Patch]) -> Saved:
    saved: Saved = []
    try:
        for owner, replacements in patches:
            saved.append((owner, {name: _own(owner, name) for name in replacements}, replacements))
            if isinstance(owner, types.ModuleType):
                vars(owner).update(replacements)  # one dict update, not a setattr each
            else:
                for name, replacement in replacements.items():
                    setattr(owner, name, replacement)
    except BaseException:
        remove(saved)  # a half-installed list leaves nothing behind
        raise
    _LIVE.add(id(saved))
    return saved


def remove(saved: Saved) -> None:
    _LIVE.discard(id(saved))
    for owner, originals, replacements in reversed(saved):
        for name, original in originals.items():
            if _own(owner, name) is not replacements[name]:
                continue
            if original is not _ABSENT:
                setattr(owner, name, original)
            elif isinstance(owner, types.ModuleType):
                del vars(owner)[name]
            else:
                delattr(owner, name)
    saved.clear()

