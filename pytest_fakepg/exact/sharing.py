"""DTensor's planning, shared by the ranks of an exact world: its sharding
decisions and redistribute plans, where they cannot differ between ranks
(NOTE [Sharing rank-free work]). Made when the world comes up and dropped
when it goes down: a later world decides everything afresh, as torch does.
The private parts come through ``_compat.dtensor``."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from .._compat import dtensor
from ..process_state import module_flags

Patch = tuple[Any, dict[str, Any]]


class SharedPlanning:
    """The sharing of one exact world: ``patches()`` are what the world
    installs while it is up; ``clear()``, at its stop, drops every
    decision, plan and path (they hold its meshes, and through them its
    groups)."""

    def __init__(self) -> None:
        self.decisions: dict[tuple[Any, ...], Any] = {}
        self.plans: dict[Any, Any] = {}
        self.paths: dict[Any, Any] = {}

    def clear(self) -> None:
        self.decisions.clear()
        self.plans.clear()
        self.paths.clear()

    def patches(self) -> list[Patch]:
        """(owner, {name: replacement}) for each part of DTensor's planning
        this torch has (none when DTensor is not loaded)."""
        return [patch for patch in (self._decisions(), self._plans(), self._paths()) if patch is not None]

    def _decisions(self) -> Patch | None:
        """DTensor decides how each op's inputs and outputs are sharded
        (``ShardingPropagator.propagate_op_sharding_non_cached``, 2.11-2.15.0),
        the bulk of a DTensor program's Python, and caches the decisions per
        thread, keyed by the op's schema: each rank would decide everything
        itself. Here a decision is keyed by the schema (and, where shards are
        uneven, the caller's coordinate: ``rank_part``) and handed to each
        rank with its own mesh in place of the one it was made with (DeviceMesh
        equality ignores the rank and the groups)."""
        parts = dtensor.sharding_propagator()
        if parts is None:
            return None
        propagator, decide, cached, tracing, spec = parts
        tables = [getattr(propagator, n) for n in ("op_strategy_funcs", "op_to_rules",
                                                   "op_single_dim_strategy_funcs") if hasattr(propagator, n)]
        decisions = self.decisions

        def shared(op_schema: Any) -> Any:
            mesh = _first_mesh((op_schema.args_schema, op_schema.kwargs_schema), spec)
            if mesh is None or tracing():
                return decide(op_schema)
            key = (op_schema, rank_part(mesh, _specs((op_schema.args_schema, op_schema.kwargs_schema), spec)))
            # The op's rules as they are now: register_sharding may replace them.
            rules = [table.get(op_schema.op) for table in tables]
            try:
                found = decisions.get(key)
            except TypeError:  # unhashable arguments (symbolic shapes)
                return decide(op_schema)
            if found is not None and all(a is b for a, b in zip(found[0], rules)):
                try:
                    return _map_meshes(found[1], lambda m: m if m is mesh else _same(m, mesh), spec)
                except LookupError:  # made on another mesh too: decide afresh
                    return decide(op_schema)
            decision = decide(op_schema)
            if _meshes_only_in_specs(decision, spec, type(mesh)):  # else it holds a mesh _map_meshes would miss
                decisions[key] = (rules, decision)
            return decision

        # The per-thread cache in front of it calls what it was made with:
        # one of the same kind around the shared decisions (cleared per world).
        return propagator, {"propagate_op_sharding_non_cached": shared,
                            "propagate_op_sharding": type(cached)(shared)}

    def _plans(self) -> Patch | None:
        """Redistribute plans (``_gen_transform_infos_non_cached``: which
        collective on which mesh dimension, 2.11-2.15.0), the bulk of planning
        when the graph-based planner searches: keyed by both specs, the
        planner's choice, the flags of its module (the names its functions
        rebind, as ``use_min_cost_redistribution_plan`` does) and
        ``rank_part``. torch's cache in front of it is per rank (NOTE
        [Per-rank process state]). A plan that holds a mesh (a flattened one)
        is not shared."""
        parts = dtensor.transform_planner()
        if parts is None:
            return None
        module, plan, mesh_type = parts
        flags = module_flags(module)
        space = vars(module)
        plans = self.plans

        @functools.wraps(plan)
        def shared(src_spec: Any, dst_spec: Any, use_graph_based_transform: Any = None) -> Any:
            mesh = src_spec.device_mesh
            try:
                key = (src_spec, dst_spec, use_graph_based_transform, tuple(space.get(n) for n in flags),
                       rank_part(mesh, (src_spec, dst_spec)))
                found = plans.get(key)
            except TypeError:  # unhashable (symbolic shapes)
                return plan(src_spec, dst_spec, use_graph_based_transform)
            if found is not None:
                return list(found)
            infos = plan(src_spec, dst_spec, use_graph_based_transform)
            if not any(isinstance(value, mesh_type) for info in infos for value in _fields(info)):
                plans[key] = tuple(infos)
            return infos

        return module, {dtensor.PLAN: shared}

    def _paths(self) -> Patch | None:
        """The graph-based planner's search (``DTensorRedistributePlanner.
        find_min_cost_path``, 2.13-2.15.0: Dijkstra over placements, costed
        from global shapes and the mesh's topology) is rank-free even where
        the plan is not: only the logical shapes it annotates the path with
        afterwards read the coordinate. Keyed by the planner's mesh, tensor
        metadata, targets, cost function and both states."""
        planner = dtensor.redistribute_planner_class()
        if planner is None:
            return None
        search = vars(planner)["find_min_cost_path"]
        paths = self.paths

        @functools.wraps(search)
        def shared(self: Any, src_state: Any, dst_state: Any) -> Any:
            try:
                key = (self.device_mesh, self.dtensor_meta, frozenset(self.strided_shard_placements_in_target),
                       frozenset(self.partial_reduce_ops_in_target), getattr(self.cost_function, "__code__", None),
                       src_state, dst_state)
                path = paths.get(key)
            except (AttributeError, TypeError):  # a planner of another make, or unhashable (symbolic shapes)
                return search(self, src_state, dst_state)
            if path is None:
                path = paths[key] = tuple(search(self, src_state, dst_state))
            return list(path)

        return planner, {"find_min_cost_path": shared}


def rank_part(mesh: Any, specs: Any) -> Any:
    """NOTE [Sharing rank-free work]
    DTensor's planning (sharding decisions, redistribute plans) reads the
    rank only through the mesh coordinate, to size this rank's shard of an
    uneven split. When every dimension of every DTensor involved is a
    multiple of the mesh's size, every split along any mesh dimensions, one
    after another, is even: each rank's shard has the same size, and the
    plan is the same on every rank. Such work is done once and shared by
    every rank of an exact world; otherwise it is keyed by the caller's coordinate as well. This is the
    part of a key that says which: None, or the coordinate (("outside",)
    for a rank not in the mesh)."""
    size = mesh.size()
    for spec in specs:
        meta = spec.tensor_meta
        if meta is None or any(int(dim) % size for dim in meta.shape):
            coordinate = mesh.get_coordinate()
            return ("outside",) if coordinate is None else tuple(coordinate)
    return None


def _specs(obj: Any, spec_type: type) -> Any:
    """Every DTensorSpec in ``obj`` (nested tuples, lists and dicts)."""
    if isinstance(obj, spec_type):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            yield from _specs(item, spec_type)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _specs(item, spec_type)


def _fields(info: Any) -> list[Any]:
    import dataclasses

    return [getattr(info, f.name, None) for f in dataclasses.fields(info)] if dataclasses.is_dataclass(info) \
        else list(vars(info).values()) if hasattr(info, "__dict__") else []


def _same(mesh: Any, caller: Any) -> Any:
    if mesh != caller:
        raise LookupError(mesh)
    return caller


def _first_mesh(obj: Any, spec_type: type) -> Any:
    if isinstance(obj, spec_type):
        return obj.mesh
    if isinstance(obj, dict):
        obj = obj.values()
    elif not isinstance(obj, (tuple, list)):
        return None
    for item in obj:
        mesh = _first_mesh(item, spec_type)
        if mesh is not None:
            return mesh
    return None


def _map_meshes(obj: Any, swap: Callable[[Any], Any], spec_type: type) -> Any:
    """``obj`` with every DTensorSpec's mesh replaced by ``swap(mesh)``;
    what holds no spec is returned as is, what does is copied."""
    import dataclasses

    if isinstance(obj, spec_type):
        mesh = swap(obj.mesh)
        if mesh is obj.mesh:
            return obj
        new = dtensor.shallow_copy(obj)
        new.mesh = mesh  # DTensorSpec recomputes its hash
        return new
    if isinstance(obj, (tuple, list)):
        items = [_map_meshes(item, swap, spec_type) for item in obj]
        if all(a is b for a, b in zip(items, obj)):
            return obj
        if type(obj) in (tuple, list):
            return type(obj)(items)
        return obj._make(items) if hasattr(obj, "_make") else type(obj)(items)
    if isinstance(obj, dict):
        items = {k: _map_meshes(v, swap, spec_type) for k, v in obj.items()}
        return obj if all(items[k] is v for k, v in obj.items()) else items
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):  # OpSchema, OutputSharding
        changed = {}
        for field in dataclasses.fields(obj):
            value = getattr(obj, field.name, None)
            new_value = _map_meshes(value, swap, spec_type)
            if new_value is not value:
                changed[field.name] = new_value
        if not changed:
            return obj
        new = dtensor.shallow_copy(obj, computed=False)  # OutputSharding.mesh: from the original's specs
        for name, value in changed.items():
            object.__setattr__(new, name, value)
        return new
    return obj


def _meshes_only_in_specs(decision: Any, spec_type: type, mesh_type: type) -> bool:
    """Whether every mesh ``decision`` holds is a DTensorSpec's ``mesh``, all
    that ``_map_meshes`` replaces (checked once per decision, when made)."""
    import gc
    import types

    import torch

    opaque = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, torch.Tensor)
    seen: set[int] = set()
    todo = [decision]
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, opaque):
            continue
        seen.add(id(obj))
        if isinstance(obj, mesh_type):
            return False
        if isinstance(obj, spec_type):
            todo.extend(v for k, v in vars(obj).items() if k != "mesh")
        else:
            todo.extend(gc.get_referents(obj))
    return True
