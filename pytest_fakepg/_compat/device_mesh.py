"""DeviceMesh: its per-process registries and its per-dimension group
factory."""

from __future__ import annotations

import functools
import itertools
import sys
from typing import Any

# -- DeviceMesh --------------------------------------------------------------------

# _mesh_resources's per-process registries: mesh_stack (2.11-2.15.0) and, in
# older releases, the slicing maps. Those present are cleared; none missing
# is an error.
_MESH_REGISTRIES = (
    "mesh_stack",
    "child_to_root_mapping",
    "mesh_dim_group_options",
    "root_to_flatten_mapping",
    "flatten_name_to_root_dims",
)


def clear_mesh_registries() -> None:
    module = sys.modules.get("torch.distributed.device_mesh")
    resources = getattr(module, "_mesh_resources", None)
    for name in _MESH_REGISTRIES:
        registry = getattr(resources, name, None)
        if isinstance(registry, (list, dict)):
            registry.clear()


# The parameters of ``DeviceMesh._init_one_process_group`` that
# ``init_device_mesh`` in mesh.py knows how to serve, by torch release.
_MESH_GROUP_PARAMETERS = (
    ("sub_layout", "rank_map", "dim_name", "backend_override"),  # 2.11-2.15.0
    ("sub_layout", "rank_map", "dim_name", "backend_override", "preserve_rank_order"),  # 2.15.0
)


# The name of DeviceMesh's per-dimension group factory.
GROUP_FACTORY = "_init_one_process_group"


def mesh_group_factory() -> tuple[Any, Any, Any] | None:
    """NOTE [compat: mesh groups] ``DeviceMesh._init_one_process_group`` (a
    staticmethod) and ``_MeshLayout``, which ``init_device_mesh`` in mesh.py
    uses to create only this rank's groups. Present in 2.11-2.15.0; 2.15 adds
    ``preserve_rank_order``. None when either is missing or the factory takes
    parameters not listed in ``_MESH_GROUP_PARAMETERS``: the mesh is then
    built by torch's stock path (all groups, slower at scale, same result).
    Returns DeviceMesh, ``_MeshLayout`` and the factory's function; mesh.py
    patches it (``GROUP_FACTORY``) through patching.py while it builds."""
    import inspect

    from torch.distributed import device_mesh as dm

    mesh_cls = getattr(dm, "DeviceMesh", None)
    layout_cls = getattr(dm, "_MeshLayout", None)
    original = vars(mesh_cls).get(GROUP_FACTORY) if mesh_cls is not None else None
    if layout_cls is None or not isinstance(original, staticmethod):
        return None
    if tuple(inspect.signature(original.__func__).parameters) not in _MESH_GROUP_PARAMETERS:
        return None
    return mesh_cls, layout_cls, original.__func__



def mesh_thread_state() -> dict[str, Any]:
    """This thread's ``_mesh_resources`` (a ``threading.local``, 2.11-2.15.0)."""
    module = sys.modules.get("torch.distributed.device_mesh")
    resources = getattr(module, "_mesh_resources", None)
    return dict(getattr(resources, "__dict__", {}))


def adopt_mesh_thread_state(state: dict[str, Any]) -> None:
    module = sys.modules.get("torch.distributed.device_mesh")
    resources = getattr(module, "_mesh_resources", None)
    if resources is not None:
        resources.__dict__.update(state)


# NOTE [Meshes of different worlds]
# DeviceMesh compares by its ranks, layout, device type, dimension names and
# ``_thread_id`` (2.11-2.15.0), which torch sets only for its threaded
# backend, to keep the meshes of the worlds that backend runs in one process
# apart. Caches keyed by meshes outlive a world in threads that outlive it:
# DTensor's sharding caches are per thread (the Python LocalLRUCache, and
# from 2.13 the C++ dispatch cache), and a world's stop clears only its own
# thread's. Backward on CUDA runs in the autograd engine's device threads,
# so the next world's equal mesh found the last one's decisions there, and
# their groups ("Could not resolve the process group registered under the
# name 16", torch 2.11). A world's meshes carry a token of their own in that
# field, as the threaded backend's carry their thread's: equal within a
# world (every exact rank's), never across worlds. Negative, so no thread
# id is one.
_WORLD_TOKENS = itertools.count(1)


def meshes_of_this_world() -> list[tuple[Any, dict[str, Any]]]:
    """[(DeviceMesh, {"__init__": ...})]: the patch making every mesh built
    while it is installed carry a new world token; none where DeviceMesh
    lacks ``_thread_id`` (then meshes compare as torch has them)."""
    from torch.distributed import device_mesh as dm

    mesh_cls = getattr(dm, "DeviceMesh", None)
    original = vars(mesh_cls).get("__init__") if mesh_cls is not None else None
    if original is None or "_thread_id" not in getattr(mesh_cls, "__annotations__", {}):
        return []
    token = -next(_WORLD_TOKENS)

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        if self._thread_id is None:
            self._thread_id = token
            self._hash = None  # computed on first use, from the token too

    return [(mesh_cls, {"__init__": __init__})]
