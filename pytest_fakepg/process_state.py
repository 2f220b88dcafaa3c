"""Module-level state a world's program changes: in an exact world, what a
rank changes in the module-level state of torch's distributed stack and of
the training libraries built on it is that rank's alone, as it would be in
its own process on a cluster; and what any world's program changes in those
libraries' state is undone when the world goes down.

NOTE [Per-rank process state]
An exact world's ranks share one interpreter, so a flag one rank sets in a
``with`` block (``use_min_cost_redistribution_plan``), a handler it registers
(``loss_parallel`` into DTensor's op dispatcher), a global module hook
(``CommDebugMode``) or a cached result would be seen by every rank. Rather
than a patch per feature, the state torch's own code writes at run time is
found by reading that code, once per module (``_written``):

- *bindings*: module-level names a module's functions rebind (``global x``)
  and the attributes of the singletons its classes or the module hold
  (``DTensor._op_dispatcher``, context parallel's options), and the names
  torch.distributed writes in other modules (``_compat.state.WRITTEN_FROM_OUTSIDE``:
  context parallel's replacement of ``F.scaled_dot_product_attention``);
- *containers*: module-level dicts, sets and lists its functions mutate in
  place (``_global_forward_hooks[...] = hook``, ``cache.add(key)``) and those
  a singleton holds, smaller than a table filled at import
  (``_compat.state.TABLE_SIZE``);
- *caches*: ``functools`` caches, whose keys (meshes compare equal across
  ranks) cannot tell ranks apart.

for every loaded module ``_compat.state`` tracks (torch.distributed's,
``torch.nn.modules.module``, whose global module hooks torch's debug tools
register, and the training libraries' own: NOTE [Client state]) and every
module the world names (``per_rank_modules``). At each switch
(NOTE [The baton]) the rank that stops has what it changed since it started
recorded as its own, copy on write, and those cells go back to what the other
ranks see (the caller's values when the run started); the rank that starts
gets its own values back. A cache a rank filled is emptied, so no rank reads
another's entries (the rank-free work behind them is shared: NOTE [Sharing
rank-free work]). When the run ends every cell is the caller's again.

What stays shared: names added while the run goes (a module imported for the
first time, a name a module defines on first use), containers created during
the run, state deeper than a singleton's attributes, state outside these
modules, and state kept in C++ (torch's thread-local state is per rank
already: each rank is a thread). Flags that guard a one-time registration in
C++ (``_compat.state.SHARED_STATE``) stay shared on purpose, since the
registry they guard is shared. c10d's own state is per rank by other means
(NOTE [compat: per-rank c10d state]).

The cost is a check of each cell at each switch, in C++ (``changed_bindings``
and ``changed_containers``, bindings.cpp): in a DTensor program about 10
bindings and 20 containers, and a ``cache_clear`` per cache; about 1.5 us a
switch (docs/performance.md).
"""

from __future__ import annotations

import dis
import enum
import importlib.abc
import itertools
import logging
import operator
import sys
import threading
import types
from collections.abc import Callable
from typing import Any

from . import _compat

# Methods that change a container in place.
_MUTATORS = frozenset({
    "append", "extend", "insert", "remove", "pop", "popitem", "clear", "update", "setdefault", "add", "discard",
    "move_to_end", "difference_update", "intersection_update", "symmetric_difference_update", "sort", "reverse",
    "__setitem__", "__delitem__",
})
_STORE_OPS = {dis.opmap[name] for name in ("STORE_GLOBAL", "DELETE_GLOBAL")}
_SUBSCRIPT_OPS = {dis.opmap[name] for name in ("STORE_SUBSCR", "DELETE_SUBSCR")}
_CONTAINERS = (dict, set, list)
_MISSING = object()


def _within(name: str, packages: tuple[str, ...] | frozenset[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def _tracked(name: str, torch: bool, named: tuple[str, ...]) -> bool:
    """Whether module ``name``'s state is kept: torch's own (when
    ``torch``), a known client's, or one the world names (with its submodules)."""
    policy = _compat.state
    if name in policy.CLIENT_MODULES or _within(name, named):
        return True
    tracked = name in policy.TRACKED_MODULES or name in policy.WRITTEN_FROM_OUTSIDE or \
        any(name.startswith(p + ".") for p in policy.TRACKED_PACKAGES)
    return torch and tracked and name not in policy.PER_RANK_ELSEWHERE and not _within(name, policy.NOT_IN_A_RANK)


def _owner(name: str) -> str:
    """The package whose classes make a module's singletons: torch.distributed
    for torch's modules, else the module's top-level package."""
    return "torch.distributed" if name.startswith("torch.") else name.partition(".")[0]


def _state_sized(container: Any) -> bool:
    return len(container) < _compat.state.TABLE_SIZE


def _functions(module: types.ModuleType) -> list[types.CodeType]:
    """The code of every function and method ``module`` defines, nested code included."""
    found: list[types.CodeType] = []

    def code_of(obj: Any) -> None:
        for _ in range(8):  # through functools.wraps layers (contextmanager, with_comms, ...)
            inner = getattr(obj, "__wrapped__", None)
            if inner is None:
                break
            obj = inner
        obj = getattr(obj, "__func__", obj)
        code = getattr(obj, "__code__", None)
        if isinstance(code, types.CodeType) and getattr(obj, "__module__", None) == module.__name__:
            stack = [code]
            while stack:
                code = stack.pop()
                found.append(code)
                stack.extend(c for c in code.co_consts if isinstance(c, types.CodeType))

    for value in list(vars(module).values()):
        if isinstance(value, type) and value.__module__ == module.__name__:
            for attr in list(vars(value).values()):
                if isinstance(attr, property):
                    for part in (attr.fget, attr.fset, attr.fdel):
                        code_of(part)
                else:
                    code_of(attr)
        else:
            code_of(value)
    return found


def _written(module: types.ModuleType) -> tuple[set[str], set[str]]:
    """The module-level names ``module``'s functions rebind or delete
    (``global x``), and the module-level containers they mutate in place
    (a subscript store or a mutating method in a function that loads them)."""
    space = vars(module)
    containers = {name for name, value in space.items() if isinstance(value, _CONTAINERS)}
    rebound: set[str] = set()
    mutated: set[str] = set()
    for code in _functions(module):
        ops = code.co_code[::2]  # one byte per instruction: the opcodes
        stores = any(bytes([op]) in ops for op in _STORE_OPS)
        loads = containers.intersection(code.co_names)
        mutates = loads and (not _MUTATORS.isdisjoint(code.co_names) or any(bytes([op]) in ops for op in _SUBSCRIPT_OPS))
        if not stores and not mutates:
            continue
        for ins in dis.get_instructions(code):
            if ins.opcode in _STORE_OPS:
                rebound.add(ins.argval)
            elif mutates and ins.opname == "LOAD_GLOBAL" and ins.argval in loads:
                mutated.add(ins.argval)
    return rebound, mutated


_SCANNED: dict[str, tuple[set[str], set[str]]] = {}


def _written_once(module: types.ModuleType) -> tuple[set[str], set[str]]:
    found = _SCANNED.get(module.__name__)
    if found is None:
        found = _SCANNED[module.__name__] = _written(module)
    return found


def module_flags(module: types.ModuleType) -> tuple[str, ...]:
    """The module-level names ``module``'s functions rebind: its flags."""
    return tuple(sorted(_written_once(module)[0]))


def _singleton(value: Any, owner: str) -> bool:
    """An object of ``owner``'s own classes whose attributes are state."""
    kind = type(value)
    return (
        _within(kind.__module__, (owner,))
        and isinstance(getattr(value, "__dict__", None), dict)
        and not isinstance(value, (type, types.ModuleType, types.FunctionType, threading.local, logging.Logger,
                                   enum.Enum))
        and not callable(value)
    )


class _Cells:
    """The state ranks keep to themselves, as found in the loaded modules
    that one selection tracks (``_tracked``): each module is read once, when
    a run first finds it loaded."""

    def __init__(self, torch: bool, named: tuple[str, ...]) -> None:
        self.torch, self.named = torch, named
        self.spaces: list[dict[str, Any]] = []  # binding i is self.spaces[i][self.names[i]]
        self.names: list[str] = []
        self.containers: list[Any] = []
        self.caches: list[Any] = []
        self.modules = 0  # len(sys.modules) when found: a new module is looked at next run
        # module name -> (the module, its bindings, containers and caches)
        self.found: dict[str, tuple[types.ModuleType, list[tuple[dict[str, Any], str]], list[Any], list[Any]]] = {}

    def refresh(self) -> None:
        if len(sys.modules) == self.modules:
            return
        self.modules = len(sys.modules)
        rank_free: list[Any] | None = None
        for name, module in list(sys.modules.items()):
            if module is None or not _tracked(name, self.torch, self.named):
                continue
            known = self.found.get(name)
            if known is None or known[0] is not module:
                if rank_free is None:
                    rank_free = _compat.state.rank_free_caches()
                self.found[name] = (module, *_read(name, module, rank_free))
        spaces, names, containers, caches = [], [], [], []
        seen: set[tuple[int, str]] = set()
        held: set[int] = set()
        for _, bindings, holds, cached in self.found.values():
            for space, attr in bindings:
                if (id(space), attr) not in seen:  # a singleton re-exported by another module
                    seen.add((id(space), attr))
                    spaces.append(space)
                    names.append(attr)
            for obj in (*holds, *cached):
                if id(obj) not in held:
                    held.add(id(obj))
                    (containers if isinstance(obj, _CONTAINERS) else caches).append(obj)
        self.spaces, self.names, self.containers, self.caches = spaces, names, containers, caches


def _read(name: str, module: types.ModuleType,
          rank_free: list[Any]) -> tuple[list[tuple[dict[str, Any], str]], list[Any], list[Any]]:
    """``module``'s bindings, containers and caches (see the NOTE)."""
    outside = _compat.state.WRITTEN_FROM_OUTSIDE.get(name)
    if outside is not None:
        space = vars(module)  # only the names torch.distributed's code writes here
        return [(space, attr) for attr in outside], [], []
    shared = _compat.state.SHARED_STATE.get(name, frozenset())
    bindings: list[tuple[dict[str, Any], str]] = []
    containers: list[Any] = []
    caches: list[Any] = []

    def singleton(obj: Any) -> None:
        space = vars(obj)
        for attr, value in space.items():
            bindings.append((space, attr))
            if isinstance(value, _CONTAINERS) and _state_sized(value):
                containers.append(value)

    def cache(fn: Any) -> None:
        fn = getattr(fn, "__func__", fn)
        if callable(getattr(fn, "cache_clear", None)) and not any(fn is f for f in rank_free):
            caches.append(fn)

    rebound, mutated = _written_once(module)
    space = vars(module)
    owner = _owner(name)
    for attr in _compat.state.CLIENT_HOLDERS.get(name, ()):
        if attr in space:
            singleton(space[attr])
    bindings.extend((space, attr) for attr in sorted(rebound - shared))
    for attr in sorted(mutated - shared):
        value = space.get(attr)
        if isinstance(value, _CONTAINERS) and _state_sized(value):
            containers.append(value)
    for value in list(space.values()):
        if isinstance(value, type) and value.__module__ == name:
            for attr in list(vars(value).values()):
                if _singleton(attr, owner):
                    singleton(attr)
                else:
                    cache(attr)
        elif _singleton(value, owner):
            singleton(value)
        elif getattr(value, "__module__", None) == name:
            cache(value)
    return bindings, containers, caches


_CELLS: dict[tuple[bool, tuple[str, ...]], _Cells] = {}


def _cells(torch: bool, named: tuple[str, ...]) -> _Cells:
    found = _CELLS.get((torch, named))
    if found is None:
        found = _CELLS[torch, named] = _Cells(torch, named)
    found.refresh()
    return found


class RankViews:
    """One run's per-rank views of the cells: ``leave(rank)`` when a rank's
    turn ends, ``enter(rank)`` when one starts, ``finish()`` at the end.
    ``torch``: torch's own state too (an exact run), else only the clients'
    and ``named`` modules' (held for a whole world: ``held``)."""

    def __init__(self, ranks: int, named: tuple[str, ...] = (), torch: bool = True) -> None:
        from . import _backend

        native = _backend.load()
        self._changed_bindings, self._changed = native.changed_bindings, native.changed_containers
        self.cells = cells = _cells(torch, named)
        self.spaces, self.names = cells.spaces, cells.names
        self.containers, self.caches = cells.containers, cells.caches
        self.base = self._bindings()
        self.base_contents = [_copy(c) for c in self.containers]
        self.expected = list(self.base)
        self.expected_contents = list(self.base_contents)
        self.own: list[tuple[dict[int, Any], dict[int, Any]] | None] = [None] * ranks
        self.running = -1

    def _bindings(self) -> list[Any]:
        return list(map(dict.get, self.spaces, self.names, itertools.repeat(_MISSING)))  # C-level: no Python call a cell

    def leave(self, rank: int) -> None:
        """What ``rank`` changed is its own; every cell back to the shared value."""
        self.running = -1
        if len(sys.modules) != self.cells.modules:
            self._grow()
        for fn in self.caches:
            fn.cache_clear()
        changed = self._changed_bindings(self.spaces, self.names, self.expected, _MISSING)
        changed_containers = self._changed_containers()
        own = self.own[rank]
        if not own and not changed and not changed_containers:
            return
        bindings, contents = own if own is not None else ({}, {})
        for i in changed:
            bindings[i] = self.spaces[i].get(self.names[i], _MISSING)
        for j in changed_containers:
            contents[j] = _copy(self.containers[j])
        self.own[rank] = (bindings, contents)
        for i in bindings:
            _set(self.spaces[i], self.names[i], self.base[i])
            self.expected[i] = self.base[i]
        for j in contents:
            _fill(self.containers[j], self.base_contents[j])
            self.expected_contents[j] = self.base_contents[j]

    def _grow(self) -> None:
        """Take in the cells of modules imported since the run began, each
        shared as its import left it (``ImportWatch``): the rank that
        imported one and changed it keeps its changes."""
        cells, n, m = self.cells, len(self.spaces), len(self.containers)
        cells.refresh()
        if cells.names[:n] != self.names or cells.containers[:m] != self.containers:
            return  # a module reloaded: its cells stay shared
        self.spaces, self.names, self.caches = cells.spaces, cells.names, cells.caches
        self.containers = cells.containers
        added = [_AS_IMPORTED.get((id(space), name), space.get(name, _MISSING))
                 for space, name in zip(self.spaces[n:], self.names[n:])]
        self.base.extend(added)
        self.expected.extend(added)
        contents = [_AS_IMPORTED_CONTENTS[id(c)] if id(c) in _AS_IMPORTED_CONTENTS else _copy(c)
                    for c in self.containers[m:]]
        self.base_contents.extend(contents)
        self.expected_contents.extend(contents)

    def _changed_containers(self) -> list[int]:
        return [j for j in self._changed(self.containers, self.expected_contents)
                if not _same(self.containers[j], self.expected_contents[j])]

    def enter(self, rank: int) -> None:
        """``rank``'s own values in the cells it changed before."""
        self.running = rank
        own = self.own[rank]
        if own is None:
            return
        bindings, contents = own
        for i, value in bindings.items():
            _set(self.spaces[i], self.names[i], value)
            self.expected[i] = value
        for j, saved in contents.items():
            _fill(self.containers[j], saved)
            self.expected_contents[j] = saved

    def finish(self) -> None:
        """The caller's values in every cell again."""
        if self.running >= 0:
            self.leave(self.running)
        for i in self._changed_bindings(self.spaces, self.names, self.base, _MISSING):  # after the last switch
            _set(self.spaces[i], self.names[i], self.base[i])
        for j in self._changed_containers():
            _fill(self.containers[j], self.base_contents[j])
        for fn in self.caches:
            fn.cache_clear()


class Held:
    """The known clients' and ``named`` modules' state as a world found it,
    put back by ``restore()`` when the world goes down (NOTE [Client
    state]): what a world's program caches there (DeepSpeed's world group,
    Megatron's parallel groups) must not reach the next world."""

    def __init__(self, named: tuple[str, ...], torch: bool) -> None:
        self.watch = ImportWatch(torch, named, self._client_seen)
        cells = self.found = _cells(False, named)
        self.cells = list(zip(cells.spaces, cells.names, (space.get(name, _MISSING)
                                                          for space, name in zip(cells.spaces, cells.names))))
        self.contents = [(c, _copy(c)) for c in cells.containers]
        self.caches = cells.caches
        # torch's own namespaces, which clients rebind from outside (DeepSpeed
        # ZeRO-3 sets torch.nn.functional.linear for good): names replaced or
        # deleted go back; names added go from the classes (they shadow what
        # is inherited) and stay in the modules (a submodule imported). Read
        # only where a client is loaded, or as one is first imported: a
        # snapshot costs about a world's own bring-up.
        self.namespaces: list[tuple[Any, dict[str, Any]]] | None = None
        if cells.found:
            self._client_seen()
        sys.meta_path.insert(0, self.watch)

    def _client_seen(self) -> None:
        if self.namespaces is None:
            self.namespaces = [(owner, dict(vars(owner))) for owner in _compat.state.torch_namespaces()]

    def restore(self) -> None:
        """Every cell as the world found it; those of modules imported while
        it was up, as their import left them."""
        if self.watch in sys.meta_path:
            sys.meta_path.remove(self.watch)
        cells, n, m = self.found, len(self.cells), len(self.contents)
        cells.refresh()
        if [name for _, name, _ in self.cells] == cells.names[:n] and \
                [c for c, _ in self.contents] == cells.containers[:m]:
            self.cells.extend((space, name, _AS_IMPORTED[id(space), name])
                              for space, name in zip(cells.spaces[n:], cells.names[n:])
                              if (id(space), name) in _AS_IMPORTED)
            self.contents.extend((c, _AS_IMPORTED_CONTENTS[id(c)]) for c in cells.containers[m:]
                                 if id(c) in _AS_IMPORTED_CONTENTS)
            self.caches = cells.caches
        _AS_IMPORTED.clear()
        _AS_IMPORTED_CONTENTS.clear()
        for owner, saved in self.namespaces or ():
            now = vars(owner)
            for name, value in saved.items():
                if now.get(name, _MISSING) is not value:
                    setattr(owner, name, value)
            if isinstance(owner, type):  # a name added to a class shadows what it inherits
                for name in [n for n in now if n not in saved]:
                    delattr(owner, name)
        for space, name, value in self.cells:
            if space.get(name, _MISSING) is not value:
                _set(space, name, value)
        for container, saved in self.contents:
            if not _same(container, saved):
                _fill(container, saved)
        for fn in self.caches:
            fn.cache_clear()


# The cells of modules imported while a world is up, as their import left
# them: (id(space), name) -> value, and id(container) -> its contents.
_AS_IMPORTED: dict[tuple[int, str], Any] = {}
_AS_IMPORTED_CONTENTS: dict[int, Any] = {}


class ImportWatch(importlib.abc.MetaPathFinder):
    """On ``sys.meta_path`` while a world is up: a kept module imported then
    (a test that imports DeepSpeed in its body) has its cells recorded as
    its import left them, before the program changes them, so that the
    other ranks and the next world start from there."""

    def __init__(self, torch: bool, named: tuple[str, ...], on_client: Callable[[], None]) -> None:
        self.torch, self.named, self.on_client = torch, named, on_client

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if not _tracked(fullname, self.torch, self.named):
            return None
        if _tracked(fullname, False, self.named):
            self.on_client()  # before the client's code runs
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _recorded(spec.loader)
        return spec


def _recorded(loader: Any) -> Any:
    """A loader that runs ``loader`` and then records the module's cells."""

    def exec_then_record(module: types.ModuleType) -> None:
        loader.exec_module(module)
        bindings, containers, _ = _read(module.__name__, module, _compat.state.rank_free_caches())
        for space, name in bindings:
            _AS_IMPORTED.setdefault((id(space), name), space.get(name, _MISSING))
        for container in containers:
            _AS_IMPORTED_CONTENTS.setdefault(id(container), _copy(container))

    return _compat.patching.AfterExec(loader, exec_then_record)


def _same(container: Any, expected: Any) -> bool:
    try:
        return bool(container == expected)
    except Exception:  # noqa: BLE001 - an element whose == raises (a tensor): by identity
        return len(container) == len(expected) and all(map(operator.is_, _values(container), _values(expected)))


def _set(space: dict[str, Any], name: str, value: Any) -> None:
    if value is _MISSING:
        space.pop(name, None)
    else:
        space[name] = value


def _copy(container: Any) -> Any:
    return dict(container) if isinstance(container, dict) else set(container) if isinstance(container, set) \
        else list(container)


def _fill(container: Any, contents: Any) -> None:
    if isinstance(container, list):
        container[:] = contents
    else:
        container.clear()
        container.update(contents)


def _values(container: Any) -> Any:
    return list(container.values()) if isinstance(container, dict) else list(container)
