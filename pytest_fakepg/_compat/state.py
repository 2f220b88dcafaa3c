"""Module-level state of torch's distributed stack that exact worlds treat
specially (NOTE [Per-rank process state]): what stays shared between ranks on
purpose, what is kept per rank by other means, and which caches hold only
rank-free results. Checked on 2.11-2.15.0; a name a torch lacks is skipped."""

from __future__ import annotations

import sys
from typing import Any

# The modules whose module-level state each rank keeps to itself (NOTE
# [Per-rank process state]): torch.distributed's, and nn.Module's global
# hooks, which torch's debug tools register.
TRACKED_PACKAGES = ("torch.distributed",)
TRACKED_MODULES = frozenset({"torch.nn.modules.module"})

# NOTE [Client state]
# The training libraries built on torch.distributed keep their groups and
# ranks in module globals, set once per process: Megatron's parallel_state
# ("... group is already initialized" when a second rank thread initialises),
# DeepSpeed's world backend and groups (a group of a world that went down:
# "Group ... is not registered"), Lightning's rank_zero_only.rank (every rank
# of an exact world saw the last one's, and the next world the last rank's).
# Each is kept per rank in exact worlds, like torch's own, and put back when
# any world goes down. A world's ``per_rank_modules`` names more (with their
# submodules). torch's own namespaces (``torch_namespaces``) are put back too:
# libraries replace torch's functions from outside, for good. Checked against megatron-core 0.19.2, DeepSpeed 0.19.8 and
# Lightning 2.6.6; a module not loaded is skipped.
CLIENT_MODULES = frozenset({
    "megatron.core.parallel_state",
    "megatron.core.tensor_parallel.random",
    "megatron.core.num_microbatches_calculator",
    "deepspeed.comm.comm",
    "deepspeed.utils.groups",
    "lightning_utilities.core.rank_zero",
})

def torch_namespaces() -> list[Any]:
    """torch's namespaces a world puts back as it found them (NOTE [Client
    state]): training libraries replace functions there for the rest of the
    process (DeepSpeed ZeRO-3's ``torch.nn.functional.linear``)."""
    import torch
    import torch.nn.functional

    return [torch, torch.nn.functional, torch.Tensor, torch.nn.Module]


# Objects whose attributes are state although they are functions, so not
# found as singletons: module name -> names in it.
CLIENT_HOLDERS: dict[str, tuple[str, ...]] = {
    "lightning_utilities.core.rank_zero": ("rank_zero_only",),
}

# Names outside torch.distributed that its code rebinds from outside, so no
# reading of their own module finds them: module name -> names. Context
# parallel's ``context_parallel()`` replaces torch.nn.functional's
# scaled_dot_product_attention while its block runs (``_distribute_function``,
# 2.13.0-2.15.0); a rank switched out inside the block would leave its CP
# wrapper to the others, whose DTensor dispatcher has no CP handlers.
WRITTEN_FROM_OUTSIDE: dict[str, tuple[str, ...]] = {
    "torch.nn.functional": ("scaled_dot_product_attention",),
}

# A container of this many entries or more when first found is a table
# filled at import (op strategies, registries), not a rank's state: copying
# it at each run would cost more than the run.
TABLE_SIZE = 65

# Modules whose state is per rank by other means: c10d's (NOTE [compat:
# per-rank c10d state], c10d.py).
PER_RANK_ELSEWHERE = frozenset({"torch.distributed.distributed_c10d"})

# Packages a rank's program does not run in a fake world: RPC (its agents
# need real processes), the launcher and elastic agents (they start the
# processes a fake world replaces), and LocalTensor (another one-process
# world, with its own per-rank values).
NOT_IN_A_RANK = ("torch.distributed.rpc", "torch.distributed.elastic", "torch.distributed.launcher",
                 "torch.distributed._local_tensor")

# Flags that guard a one-time registration in torch's C++ state, which every
# rank of an exact world shares: a rank that saw it unset would register again.
SHARED_STATE: dict[str, frozenset[str]] = {
    "torch.distributed.device_mesh": frozenset({"_distributed_opaque_types_registered"}),
}


def rank_free_caches() -> list[Any]:
    """``functools`` caches whose results are the same on every rank, so the
    ranks may share them: the sharding propagator's tensor-metadata cache
    (``ShardingPropagator._propagate_tensor_meta_cached``: global shapes),
    ``MeshTopoInfo.build_from_mesh`` (the mesh's shape and device) and the
    warn-once helpers (``_collective_utils.warning_once``, FSDP's
    ``_warn_*``), whose warnings a process gives once. Every other cache is
    per rank."""
    found = []
    prop = sys.modules.get("torch.distributed.tensor._sharding_prop")
    utils = sys.modules.get("torch.distributed.tensor._collective_utils")
    flat = sys.modules.get("torch.distributed.fsdp._flat_param")
    candidates = [
        getattr(getattr(prop, "ShardingPropagator", None), "_propagate_tensor_meta_cached", None),
        getattr(getattr(utils, "MeshTopoInfo", None), "build_from_mesh", None),
        getattr(utils, "warning_once", None),
        getattr(flat, "_get_dtype_size", None),
        *(getattr(flat, name, None) for name in ("_warn_skip_writeback_check", "_warn_use_fake_all_gather",
                                                 "_warn_use_fake_reduce")),
    ]
    for fn in candidates:
        fn = getattr(fn, "__func__", fn)
        if fn is not None:
            found.append(fn)
    return found


def traces() -> dict[str, Any]:
    """What a world could leave in this process, as plain values: equal
    before and after any world (tests/conftest.py's ``pristine``, the soak,
    tests/test_isolation.py). Reads torch's registries without importing a
    module that is not loaded yet (2.11-2.15.0)."""
    import os
    import threading

    from . import context_parallel, patching

    found: dict[str, Any] = {"patches installed": patching.installed(), "excepthook": sys.excepthook,
                             "environment": {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"},
                             "threads": sorted(t.name for t in threading.enumerate() if t.name != "fakepg-rank"),
                             "import hooks": [type(finder).__name__ for finder in sys.meta_path]}
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available():
        return found
    world = dist.distributed_c10d._world
    found["default group"] = dist.is_initialized()
    found["groups"] = {name: len(getattr(world, name, ())) for name in (
        "pg_map", "pg_names", "tags_to_pg", "pg_group_ranks", "pg_backend_config", "pg_to_tag", "pg_coalesce_state")}
    plugin = getattr(dist.Backend, "_plugins", {}).get("FAKE")
    found["'fake' served by fakepg"] = plugin is not None and plugin.creator_fn.__module__.startswith("pytest_fakepg")
    mesh = getattr(sys.modules.get("torch.distributed.device_mesh"), "_mesh_resources", None)
    found["mesh stack"] = len(getattr(mesh, "mesh_stack", ()))
    found["DTensor RNG tracker"] = getattr(sys.modules.get("torch.distributed.tensor._random"), "_rng_tracker", None)
    cp = sys.modules.get(context_parallel.ATTENTION)
    if cp is not None:
        found["context parallel"] = (context_parallel.dispatcher_on(), sorted(map(str, getattr(cp, "custom_ops", ()))))
    api = sys.modules.get("torch.distributed.tensor._api")
    if api is not None:
        import torch

        propagator = api.DTensor._op_dispatcher.sharding_propagator
        stats = getattr(torch._C, "_get_DTensor_sharding_propagator_cache_stats", None)
        found["DTensor sharding caches"] = (propagator.propagate_op_sharding.cache.cache_info().currsize,
                                            None if stats is None else stats())
        found["DTensor propagator"] = sorted(vars(propagator))
    return found
