"""Every private torch name pytest-fakepg relies on, behind one door.

Each function says what it is for, the torch versions it was checked
against (2.11 on the GPU machine, 2.13.0 and 2.14.1 here) and what happens
when the name is missing. Nothing else in the package reaches into torch's
private API, and nothing here is imported before a world starts.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup


@functools.cache
def _c10d() -> Any:
    import torch.distributed.distributed_c10d as c10d

    return c10d


# -- process group bookkeeping -------------------------------------------------


def group_count() -> int:
    """NOTE [compat: group names] torch names groups "0", "1", ... from
    ``_world.group_count``, which ``destroy_process_group`` resets. Worlds
    carry it on so that no group name is reused in a process. Missing: 0
    (names may then repeat across worlds; nothing else breaks)."""
    return int(getattr(_c10d()._world, "group_count", 0))


def set_group_count(value: int) -> None:
    world = _c10d()._world
    if hasattr(world, "group_count"):
        world.group_count = value


def default_group() -> ProcessGroup:
    """``_get_default_group``: the default group object (2.11-2.14.1)."""
    return _c10d()._get_default_group()


def group_descriptions() -> dict[str, str]:
    """Group name -> description (``mesh_tp``, ``default_pg``, ...) of every
    registered group, read from ``_world.pg_names``; {} if missing."""
    names = getattr(_c10d()._world, "pg_names", {})
    return {name: getattr(pg, "group_desc", "") for pg, name in names.items()}


# -- backends --------------------------------------------------------------------


@functools.cache
def register_stock_fake() -> Any:
    """torch registers its stock ``fake`` backend only when this test module
    is imported (2.11-2.14.1); returns ``FakeProcessGroup.Options``."""
    import torch.testing._internal.distributed.fake_pg  # noqa: F401
    from torch._C._distributed_c10d import FakeProcessGroup

    return FakeProcessGroup.Options


def swap_backend_creator(name: str, creator: Callable[..., Any] | None) -> Any:
    """NOTE [compat: backend plugins] Point the c10d backend ``name`` at
    ``creator`` (extended API) through ``Backend._plugins``, or remove it
    (None); returns what was there, for ``restore_backend_creator``. Checked
    2.11-2.14.1; missing ``_plugins`` raises, so a world on a torch without it
    fails to start rather than run ``fake`` groups somewhere unexpected."""
    import torch.distributed as dist

    plugins = dist.Backend._plugins
    key = name.upper()
    before = plugins.get(key)
    if creator is None:
        plugins.pop(key, None)
    else:
        plugins[key] = dist.Backend._BackendPlugin(creator, True)
    return before


def restore_backend_creator(name: str, ours: Callable[..., Any], before: Any) -> None:
    """Undo ``swap_backend_creator`` unless someone registered ``name`` anew
    meanwhile (then theirs stays)."""
    import torch.distributed as dist

    plugins = dist.Backend._plugins
    key = name.upper()
    current = plugins.get(key)
    if current is None or current.creator_fn is not ours:
        return
    if before is None:
        del plugins[key]
    else:
        plugins[key] = before


# -- DeviceMesh --------------------------------------------------------------------

# _mesh_resources's per-process registries: mesh_stack (2.11-2.14.1) and, in
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


def mesh_group_factory() -> tuple[Any, Any] | None:
    """NOTE [compat: mesh groups] ``DeviceMesh._init_one_process_group`` (a
    staticmethod) and ``_MeshLayout``, which ``_init_device_mesh`` in world.py
    uses to create only this rank's groups. Present in 2.11-2.14.1; None when
    either is missing, and the mesh is then built by torch's stock path (all
    groups, slower at scale, same result)."""
    from torch.distributed import device_mesh as dm

    mesh_cls = getattr(dm, "DeviceMesh", None)
    layout_cls = getattr(dm, "_MeshLayout", None)
    original = vars(mesh_cls).get("_init_one_process_group") if mesh_cls is not None else None
    if layout_cls is None or not isinstance(original, staticmethod):
        return None
    return mesh_cls, layout_cls


# -- DTensor -----------------------------------------------------------------------


def clear_dtensor_state() -> None:
    """DTensor's RNG tracker (``tensor._random._rng_tracker``), the sharding
    propagator's Python lru_caches and the C++ fast path's cache
    (``torch._C._clear_DTensor_sharding_propagator_cache``, 2.13+; absent in
    2.11, which has no such cache). Only modules already imported are
    touched; a missing name is skipped."""
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


# -- torch.compile -------------------------------------------------------------------


def dynamo_frames() -> int:
    """NOTE [compat: compiled code] How many frames dynamo has compiled
    (``convert_frame.FRAME_COUNTER``, 2.11-2.14.1); 0 before dynamo is
    imported or where the counter is missing (then compiled code is never
    reset, and a function compiled against one world's group recompiles in
    the next until dynamo's recompile limit)."""
    convert_frame = sys.modules.get("torch._dynamo.convert_frame")
    return int(getattr(convert_frame, "FRAME_COUNTER", 0))


def reset_compiled_code() -> None:
    """``torch._dynamo.reset_code_caches()``: drop compiled code (its guards
    hold the process group of a world that is gone)."""
    import torch._dynamo

    torch._dynamo.reset_code_caches()


# -- the environment ---------------------------------------------------------------


def environ_data() -> dict[Any, Any]:
    """``os.environ._data``: its encoded items, a plain dict that copies and
    compares at C speed (walking ``os.environ`` decodes every item). CPython
    3.10-3.13; elsewhere a decoded copy, slower and equal."""
    data = getattr(os.environ, "_data", None)
    return data if isinstance(data, dict) else dict(os.environ)


# -- exact worlds ------------------------------------------------------------------


def install_thread_local_world() -> Any:
    """NOTE [compat: per-rank c10d state] c10d keeps a process's groups in the
    module global ``distributed_c10d._world`` (a ``_World``), read at every
    call. An exact world runs each rank on its own thread, so the global is
    replaced by a ``_World`` whose state is per thread, as torch's own
    MultiThreadedTestCase does (its ThreadLocalWorld); the properties made
    per thread are the ones ``_World`` defines with stored state (2.11 to
    2.14.1). Functional collectives find groups by name in a C++ registry,
    made per thread by ``_set_thread_isolation_mode``; DeviceMesh's registry
    is a ``threading.local`` already. Returns what ``uninstall`` needs."""
    import torch

    c10d = _c10d()
    world = _per_thread_world_class()()
    saved = (c10d._world, torch._C._distributed_c10d._get_thread_isolation_mode()
             if hasattr(torch._C._distributed_c10d, "_get_thread_isolation_mode") else False)
    c10d._world = world
    torch._C._distributed_c10d._set_thread_isolation_mode(True)
    return saved


# c10d's _World properties with stored state: settable ones start at these
# values, the others as a new container of this type.
_PER_THREAD_SET = {"default_pg": None, "group_count": 0}
_PER_THREAD_NEW = {
    "pg_map": dict, "pg_names": dict, "pg_group_ranks": dict, "pg_backend_config": dict,
    "tags_to_pg": dict, "pg_to_tag": dict, "pg_coalesce_state": dict, "comms": list,
}


@functools.cache
def _per_thread_world_class() -> type:
    """A ``_World`` whose stored state is per thread (made once per process):
    a ``threading.local`` whose ``__init__`` runs in each thread on first use,
    read through C-level getters (c10d reads them at every call)."""
    import operator
    import threading

    world_cls = _c10d()._World
    names = [n for n in (*_PER_THREAD_SET, *_PER_THREAD_NEW) if isinstance(vars(world_cls).get(n), property)]

    def init(self: Any) -> None:  # not _World.__init__: everything it sets is per thread here
        for name, value in _PER_THREAD_SET.items():
            setattr(self, f"_per_thread_{name}", value)
        for name, new in _PER_THREAD_NEW.items():
            setattr(self, f"_per_thread_{name}", new())

    def prop(name: str) -> property:
        stored = f"_per_thread_{name}"

        def put(self: Any, value: Any) -> None:
            setattr(self, stored, value)

        return property(operator.attrgetter(stored), put if name in _PER_THREAD_SET else None)

    return type("_PerThreadWorld", (threading.local, world_cls), {"__init__": init, **{n: prop(n) for n in names}})


def uninstall_thread_local_world(saved: Any) -> None:
    import torch

    world, isolation = saved
    _c10d()._world = world
    torch._C._distributed_c10d._set_thread_isolation_mode(isolation)


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
