"""Per-rank process state: what a rank's program changes in the module-level
state of torch's distributed stack is that rank's alone, as it would be in
its own process on a cluster.

NOTE [Per-rank process state]
An exact world's ranks share one interpreter, so a flag one rank sets in a
``with`` block (``use_min_cost_redistribution_plan``), a handler it registers
(``loss_parallel`` into DTensor's op dispatcher), a global module hook
(``CommDebugMode``) or a cached result would be seen by every rank. Rather
than a patch per feature, the state torch's own code writes at run time is
found by reading that code, once per module (``_written``):

- *bindings*: module-level names a module's functions rebind (``global x``)
  and the attributes of the singletons its classes or the module hold
  (``DTensor._op_dispatcher``, context parallel's options);
- *containers*: module-level dicts, sets and lists its functions mutate in
  place (``_global_forward_hooks[...] = hook``, ``cache.add(key)``) and those
  a singleton holds, smaller than a table filled at import
  (``_compat.state.TABLE_SIZE``);
- *caches*: ``functools`` caches, whose keys (meshes compare equal across
  ranks) cannot tell ranks apart.

for every loaded module ``_compat.state`` tracks (torch.distributed's, and
``torch.nn.modules.module``, whose global module hooks torch's debug tools
register). At each switch
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
import itertools
import logging
import operator
import sys
import threading
import types
from typing import Any

from .. import _compat

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


def _tracked(name: str) -> bool:
    policy = _compat.state
    return (name in policy.TRACKED_MODULES or any(name.startswith(p + ".") for p in policy.TRACKED_PACKAGES)) and \
        name not in policy.PER_RANK_ELSEWHERE and \
        not any(name == p or name.startswith(p + ".") for p in policy.NOT_IN_A_RANK)


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


def module_flags(module: types.ModuleType) -> tuple[str, ...]:
    """The module-level names ``module``'s functions rebind: its flags."""
    return tuple(sorted(_CELLS.written(module)[0]))


def _singleton(value: Any) -> bool:
    """An object of torch.distributed's own class whose attributes are state."""
    kind = type(value)
    return (
        kind.__module__.startswith("torch.distributed")
        and isinstance(getattr(value, "__dict__", None), dict)
        and not isinstance(value, (type, types.ModuleType, types.FunctionType, threading.local, logging.Logger,
                                   enum.Enum))
        and not callable(value)
    )


class _Cells:
    """The state ranks keep to themselves, as found in the loaded modules:
    each module is read once, when a run first finds it loaded."""

    def __init__(self) -> None:
        self.spaces: list[dict[str, Any]] = []  # binding i is self.spaces[i][self.names[i]]
        self.names: list[str] = []
        self.containers: list[Any] = []
        self.caches: list[Any] = []
        self.modules = 0  # len(sys.modules) when found: a new module is looked at next run
        self.scanned: dict[str, tuple[set[str], set[str]]] = {}
        # module name -> (the module, its bindings, containers and caches)
        self.found: dict[str, tuple[types.ModuleType, list[tuple[dict[str, Any], str]], list[Any], list[Any]]] = {}

    def written(self, module: types.ModuleType) -> tuple[set[str], set[str]]:
        found = self.scanned.get(module.__name__)
        if found is None:
            found = self.scanned[module.__name__] = _written(module)
        return found

    def refresh(self) -> None:
        if len(sys.modules) == self.modules:
            return
        self.modules = len(sys.modules)
        rank_free: list[Any] | None = None
        for name, module in list(sys.modules.items()):
            if module is None or not _tracked(name):
                continue
            known = self.found.get(name)
            if known is None or known[0] is not module:
                if rank_free is None:
                    rank_free = _compat.state.rank_free_caches()
                self.found[name] = (module, *self._read(name, module, rank_free))
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

    def _read(self, name: str, module: types.ModuleType,
              rank_free: list[Any]) -> tuple[list[tuple[dict[str, Any], str]], list[Any], list[Any]]:
        """``module``'s bindings, containers and caches (see the NOTE)."""
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

        rebound, mutated = self.written(module)
        space = vars(module)
        bindings.extend((space, attr) for attr in sorted(rebound - shared))
        for attr in sorted(mutated - shared):
            value = space.get(attr)
            if isinstance(value, _CONTAINERS) and _state_sized(value):
                containers.append(value)
        for value in list(space.values()):
            if isinstance(value, type) and value.__module__ == name:
                for attr in list(vars(value).values()):
                    if _singleton(attr):
                        singleton(attr)
                    else:
                        cache(attr)
            elif _singleton(value):
                singleton(value)
            elif getattr(value, "__module__", None) == name:
                cache(value)
        return bindings, containers, caches


_CELLS = _Cells()


class RankViews:
    """One run's per-rank views of the cells: ``leave(rank)`` when a rank's
    turn ends, ``enter(rank)`` when one starts, ``finish()`` at the end."""

    def __init__(self, ranks: int) -> None:
        from .. import _backend

        native = _backend.load()
        self._changed_bindings, self._changed = native.changed_bindings, native.changed_containers
        _CELLS.refresh()
        self.spaces, self.names = _CELLS.spaces, _CELLS.names
        self.containers, self.caches = _CELLS.containers, _CELLS.caches
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

    def _changed_containers(self) -> list[int]:
        changed = []
        for j in self._changed(self.containers, self.expected_contents):
            container, expected = self.containers[j], self.expected_contents[j]
            try:
                same = container == expected
            except Exception:  # noqa: BLE001 - an element whose == raises (a tensor): by identity
                same = len(container) == len(expected) and all(map(operator.is_, _values(container), _values(expected)))
            if not same:
                changed.append(j)
        return changed

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
