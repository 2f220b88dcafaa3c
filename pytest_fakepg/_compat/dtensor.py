"""DTensor: its caches, its RNG tracker, and its sharding propagator."""

from __future__ import annotations

import sys
import threading
from typing import Any

# -- DTensor -----------------------------------------------------------------------


def clear_dtensor_state(every_thread: bool = False) -> None:
    """DTensor's RNG tracker (``tensor._random._rng_tracker``), the sharding
    propagator's Python lru_caches, the C++ fast path's cache
    (``torch._C._clear_DTensor_sharding_propagator_cache``, 2.13+; absent in
    2.11, which has no such cache), the redistribute planners and plans and
    ``MeshTopoInfo.build_from_mesh``'s. Only
    modules already imported are touched; a missing name is skipped."""
    random = sys.modules.get("torch.distributed.tensor._random")
    if random is not None and getattr(random, "_rng_tracker", None) is not None:
        random._rng_tracker = None
    api = sys.modules.get("torch.distributed.tensor._api")
    if api is None:
        return
    propagator = api.DTensor._op_dispatcher.sharding_propagator
    for name in ("propagate_op_sharding", "_propagate_tensor_meta_cached"):
        cached = getattr(propagator, name, None)
        wrapped = getattr(getattr(cached, "cache", None), "__wrapped__", None)
        if every_thread and isinstance(cached, threading.local) and callable(wrapped):
            # propagate_op_sharding is a LocalLRUCache (a threading.local,
            # 2.11-2.15.0): cache_clear() empties the calling thread's cache
            # only (NOTE [Meshes of different worlds], device_mesh.py). A new
            # one of the same kind drops every thread's: when a world goes
            # down (``every_thread``), with torch's own function back in place
            # (never while a world's patch is in).
            setattr(propagator, name, type(cached)(wrapped))
            continue
        clear = getattr(cached, "cache_clear", None)
        if clear is not None:
            clear()
    import torch

    clear_native = getattr(torch._C, "_clear_DTensor_sharding_propagator_cache", None)
    if clear_native is not None:
        clear_native()
    # The redistribute caches (2.11-2.15.0): planners keyed by a weakref to
    # the mesh, plans keyed by the specs; both hold this world's meshes.
    redistribute = sys.modules.get("torch.distributed.tensor._redistribute")
    planners = getattr(redistribute, "_planner_cache", None)
    if isinstance(planners, dict):
        planners.clear()
    clear = getattr(getattr(redistribute, "_gen_transform_infos", None), "cache_clear", None)
    if clear is not None:
        clear()
    # Rank-free, but it keeps every world's mesh (and through it the groups).
    topology = getattr(sys.modules.get("torch.distributed.tensor._collective_utils"), "MeshTopoInfo", None)
    clear = getattr(getattr(topology, "build_from_mesh", None), "cache_clear", None)
    if clear is not None:
        clear()


def sharding_propagator() -> tuple[Any, Any, Any, Any, type] | None:
    """DTensor's sharding propagator and what sharing its decisions needs
    (``_sharding.py``): the propagator, its uncached and cached decision
    functions (``propagate_op_sharding_non_cached`` and
    ``propagate_op_sharding``), the tracing check its module makes before it
    caches (``_are_we_tracing``) and ``DTensorSpec`` (2.11-2.15.0). None when
    DTensor is not loaded or lacks any of them."""
    api = sys.modules.get("torch.distributed.tensor._api")
    propagator = getattr(getattr(getattr(api, "DTensor", None), "_op_dispatcher", None), "sharding_propagator", None)
    decide = getattr(propagator, "propagate_op_sharding_non_cached", None)
    cached = getattr(propagator, "propagate_op_sharding", None)
    tracing = getattr(sys.modules.get(type(propagator).__module__), "_are_we_tracing", None)
    spec = getattr(sys.modules.get("torch.distributed.tensor._dtensor_spec"), "DTensorSpec", None)
    if decide is None or cached is None or tracing is None or spec is None:
        return None
    return propagator, decide, cached, tracing, spec



PLAN = "_gen_transform_infos_non_cached"


def transform_planner() -> tuple[Any, Any, type] | None:
    """``tensor._redistribute`` (the module), its
    ``_gen_transform_infos_non_cached`` (``PLAN``: which
    ``_gen_transform_infos``'s cache and ``redistribute_local_tensor`` call
    by module global) and DeviceMesh, 2.11-2.15.0. None when the module is
    not loaded or lacks it."""
    module = sys.modules.get("torch.distributed.tensor._redistribute")
    plan = getattr(module, PLAN, None)
    mesh = getattr(sys.modules.get("torch.distributed.device_mesh"), "DeviceMesh", None)
    if plan is None or mesh is None:
        return None
    return module, plan, mesh


def redistribute_planner_class() -> type | None:
    """``tensor._redistribute.DTensorRedistributePlanner`` when it defines
    ``find_min_cost_path`` itself and its instances keep ``device_mesh``,
    ``dtensor_meta``, ``strided_shard_placements_in_target``,
    ``partial_reduce_ops_in_target`` and ``cost_function`` (2.13-2.15.0; 2.11
    has no graph-based planner), else None."""
    planner = getattr(sys.modules.get("torch.distributed.tensor._redistribute"), "DTensorRedistributePlanner", None)
    if planner is None or "find_min_cost_path" not in vars(planner):
        return None
    return planner


def shallow_copy(obj: Any, computed: bool = True) -> Any:
    """A copy of a DTensor planning object (DTensorSpec, OpSchema,
    OutputSharding) holding the same fields, made without ``__init__`` (which
    validates and recomputes) and without pickling (DeviceMesh pickles itself
    by its groups): these keep their state in ``__dict__``, 2.11-2.15.0.
    ``computed=False`` leaves out ``functools.cached_property`` values, which
    were computed from the original's fields."""
    import functools

    new = object.__new__(type(obj))
    state = vars(new)
    state.update(vars(obj))
    if not computed:
        for name in [n for n in state if isinstance(getattr(type(obj), n, None), functools.cached_property)]:
            del state[name]
    return new
