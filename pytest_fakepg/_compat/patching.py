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

An owner may also be a module's name, for a module that may not be imported
yet (importing it would cost every world its import time): patched at once
if it is loaded, else as soon as its import finishes, while the patches are
installed. Its replacements may then be a function of the module.
"""

from __future__ import annotations

import importlib.abc
import sys
import types
from collections.abc import Callable
from typing import Any

Patch = tuple[Any, Any]  # (owner, {name: replacement}); a module name's replacements may be module -> dict
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
            if isinstance(owner, str):
                module = sys.modules.get(owner)
                if module is None:
                    _WATCH.wait(owner, replacements, saved)
                    continue
                owner = module
            _install_one(owner, replacements(owner) if callable(replacements) else replacements, saved)
    except BaseException:
        remove(saved)  # a half-installed list leaves nothing behind
        raise
    _LIVE.add(id(saved))
    return saved


def _install_one(owner: Any, replacements: dict[str, Any], saved: Saved) -> None:
    saved.append((owner, {name: _own(owner, name) for name in replacements}, replacements))
    if isinstance(owner, types.ModuleType):
        vars(owner).update(replacements)  # one dict update, not a setattr each
    else:
        for name, replacement in replacements.items():
            setattr(owner, name, replacement)


def remove(saved: Saved) -> None:
    _LIVE.discard(id(saved))
    _WATCH.forget(saved)
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


class _Watch(importlib.abc.MetaPathFinder):
    """On ``sys.meta_path`` while a patch waits for its module: the module's
    loader is wrapped so that the patch goes in as its import finishes."""

    def __init__(self) -> None:
        # module name -> [(replacements, the Saved list it joins)]
        self.waiting: dict[str, list[tuple[Any, Saved]]] = {}
        # Names being looked up: another finder that asks every finder in
        # turn (an exact world's ImportWatch, process_state.py) asks this one
        # again, which must then stand aside, not ask it back forever.
        self.finding: set[str] = set()

    def wait(self, name: str, replacements: Any, saved: Saved) -> None:
        self.waiting.setdefault(name, []).append((replacements, saved))
        if self not in sys.meta_path:
            sys.meta_path.insert(0, self)

    def forget(self, saved: Saved) -> None:
        for name in list(self.waiting):
            self.waiting[name] = [w for w in self.waiting[name] if w[1] is not saved]
        self._settle()

    def _settle(self) -> None:
        """Off ``sys.meta_path`` once nothing waits."""
        for name in [n for n, waiting in self.waiting.items() if not waiting]:
            del self.waiting[name]
        if not self.waiting and self in sys.meta_path:
            sys.meta_path.remove(self)

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname not in self.waiting or fullname in self.finding:
            return None
        self.finding.add(fullname)
        try:
            for finder in sys.meta_path:
                spec = None if finder is self or not hasattr(finder, "find_spec") else \
                    finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
            else:
                return None
        finally:
            self.finding.discard(fullname)
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_then_patch(module: types.ModuleType) -> None:
            exec_module(module)
            for replacements, saved in self.waiting.pop(fullname, []):
                _install_one(module, replacements(module) if callable(replacements) else replacements, saved)
            self._settle()

        spec.loader = AfterExec(loader, exec_then_patch)
        return spec


class AfterExec:
    """``loader``, whose ``exec_module`` is ``exec_module`` (which runs the
    loader's and then more: a patch, a record of the module); the module
    keeps the original loader."""

    def __init__(self, loader: Any, exec_module: Callable[[types.ModuleType], None]) -> None:
        self._loader, self._exec = loader, exec_module

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        module.__loader__ = module.__spec__.loader = self._loader  # nothing keeps this wrapper
        self._exec(module)


_WATCH = _Watch()
