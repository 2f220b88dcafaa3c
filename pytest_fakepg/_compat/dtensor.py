"""DTensor: its caches, its RNG tracker, and its sharding propagator."""

from __future__ import annotations

import functools
import sys
from typing import Any

# -- DTensor -----------------------------------------------------------------------


def clear_dtensor_state() -> None:
    """DTensor's RNG tracker (``tensor._random._rng_tracker``), the sharding
    propagator's Python lru_caches, the C++ fast path's cache
    (``torch._C._clear_DTensor_sharding_propagator_cache``, 2.13+; absent in
    2.11, which has no such cache), the redistribute caches (NOTE [compat:
    redistribute caches]) and ``MeshTopoInfo.build_from_mesh``'s. Only
    modules already imported are touched; a missing name is skipped."""
    random = sys.modules.get("torch.distributed.tensor._random")
    if random is not None and getattr(random, "_rng_tracker", None) is not None:
        random._rng_tracker = None
    api = sys.modules.get("torch.distributed.tensor._api")
    if api is None:
        return
    propagator = api.DTensor._op_dispatcher.sharding_propagator
    for name in ("propagate_op_sharding", "_propagate_tensor_meta_cached"):
        clear = getattr(getattr(propagator, name, None), "cache_clear", None)
        if clear is not None:
            clear()
    import torch

    clear_native = getattr(torch._C, "_clear_DTensor_sharding_propagator_cache", None)
    if clear_native is not None:
        clear_native()
    installed = redistribute_caches()
    if installed is not None:
        planners, transforms = installed
        planners.clear()
        transforms.cache_clear()
    # Rank-free, but it keeps every world's mesh (and through it the groups).
    topology = getattr(sys.modules.get("torch.distributed.tensor._collective_utils"), "MeshTopoInfo", None)
    clear = getattr(getattr(topology, "build_from_mesh", None), "cache_clear", None)
    if clear is not None:
        clear()


def redistribute_caches(fresh: bool = False) -> Any:
    """NOTE [compat: redistribute caches] ``tensor._redistribute``'s
    ``_planner_cache`` (planners keyed by a weakref to the mesh) and the
    ``functools.cache`` on ``_gen_transform_infos`` (keyed by the specs),
    2.11-2.15.0. Both are per process, and what they hold depends on the
    rank: a planner computes shapes from its mesh's coordinate. DeviceMesh
    equality ignores the rank, so another rank (of an exact world, or of a
    later world) would find this rank's: an exact world gives each rank its
    own, swapped at each switch, and every world clears them. Returns the
    installed pair, or with ``fresh`` a new empty pair; None when the module
    is not loaded or lacks them."""
    global _TORCHS_REDISTRIBUTE_CACHES
    module = sys.modules.get("torch.distributed.tensor._redistribute")
    planners = getattr(module, "_planner_cache", None)
    transforms = getattr(module, "_gen_transform_infos", None)
    compute = getattr(module, "_gen_transform_infos_non_cached", None)
    if not isinstance(planners, dict) or not hasattr(transforms, "cache_clear") or compute is None:
        return None
    if _TORCHS_REDISTRIBUTE_CACHES is None:  # first seen: nothing of ours was installed yet
        _TORCHS_REDISTRIBUTE_CACHES = (planners, transforms)
    return ({}, functools.cache(compute)) if fresh else (planners, transforms)


# torch's own pair, to put back after an exact world that loaded DTensor.
_TORCHS_REDISTRIBUTE_CACHES: tuple[Any, Any] | None = None


def torchs_redistribute_caches() -> Any:
    redistribute_caches()
    return _TORCHS_REDISTRIBUTE_CACHES


def set_redistribute_caches(caches: Any) -> None:
    module = sys.modules.get("torch.distributed.tensor._redistribute")
    if caches is not None and module is not None:
        module._planner_cache, module._gen_transform_infos = caches


def dtensor_rng_tracker() -> Any:
    """DTensor's RNG tracker (a module global; None until first used), or
    None when DTensor is not loaded. NOTE [compat: DTensor RNG tracker]: per
    process in torch, so an exact world swaps it per rank."""
    module = sys.modules.get("torch.distributed.tensor._random")
    return None if module is None else getattr(module, "_rng_tracker", None)


def set_dtensor_rng_tracker(tracker: Any) -> None:
    module = sys.modules.get("torch.distributed.tensor._random")
    if module is not None and hasattr(module, "_rng_tracker"):
        module._rng_tracker = tracker


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

