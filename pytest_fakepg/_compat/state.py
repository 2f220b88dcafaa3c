"""Module-level state of torch's distributed stack that exact worlds treat
specially (NOTE [Per-rank process state]): what stays shared between ranks on
purpose, what is kept per rank by other means, and which caches hold only
rank-free results. Checked on 2.11-2.15.0; a name a torch lacks is skipped."""

from __future__ import annotations

import sys
from typing import Any

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
