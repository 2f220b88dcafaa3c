"""Every private torch name pytest-fakepg relies on, behind one door.

Each function says what it is for, the torch versions it was checked
against (2.11 on the GPU machine, 2.13.0, 2.14.1 and 2.15.0 here) and what happens
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


# The torch releases every note below was checked on.
TESTED_TORCH = ("2.11", "2.13.0", "2.14.1", "2.15.0")


class UnsupportedTorchError(RuntimeError):
    """A torch internal pytest-fakepg relies on is not where it expects it:
    names the torch version and the versions the plugin was tested with."""


def tested_text() -> str:
    return f"pytest-fakepg was tested with torch {', '.join(TESTED_TORCH[:-1])} and {TESTED_TORCH[-1]}"


def _door(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Turn a missing or changed torch name met by the shim into an
    UnsupportedTorchError saying what could not be done, instead of an
    AttributeError or TypeError from somewhere inside torch."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def checked(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except (AttributeError, ImportError, TypeError) as exc:
                import torch

                raise UnsupportedTorchError(
                    f"pytest-fakepg cannot {what} on torch {torch.__version__} "
                    f"({type(exc).__name__}: {exc}); {tested_text()}. A newer torch may have "
                    "moved this internal: please report it with your torch version."
                ) from exc

        return checked

    return wrap


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


@_door("find the default process group")
def default_group() -> ProcessGroup:
    """``_get_default_group``: the default group object (2.11-2.15.0)."""
    return _c10d()._get_default_group()


def group_descriptions() -> dict[str, str]:
    """Group name -> description (``mesh_tp``, ``default_pg``, ...) of every
    registered group, read from ``_world.pg_names``; {} if missing."""
    names = getattr(_c10d()._world, "pg_names", {})
    return {name: getattr(pg, "group_desc", "") for pg, name in names.items()}


def init_default_group(backend: str, rank: int, world_size: int, store: Any,
                       make_backend: Callable[[int, int, str], Any]) -> None:
    """NOTE [compat: default group made directly] ``init_process_group`` for
    a backend of our own, ``make_backend(rank, size, name)`` making its
    backend. Torch's spends most of its time (about 150 us here, twice that on
    a rank's thread) in logging, checks and options that a fake world never
    varies, and every test makes one default group per rank. So the group is
    made with the same calls ``_new_process_group_helper`` makes for a plugin
    backend whose devices share one backend (2.11-2.15.0), and registered as
    it registers it. Checked once per process, not trusted: the first default
    group of each world size is torch's own, and the next is made directly and
    compared with it (every ``_World`` property, the group's own state and
    c10d's module globals, ``_default_group_state``). Equal: made directly from
    then on. Different, or a name missing: undone and made by torch, and by
    torch from then on. Unlike torch's, it does not wrap ``sys.excepthook``."""
    global _DIRECT_GROUPS
    dist = _c10d()
    if _DIRECT_GROUPS is False or (_DIRECT_GROUPS is None and world_size not in _TORCHS_DEFAULT_GROUP):
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, store=store)
        if _DIRECT_GROUPS is None and world_size <= 1024:  # its state holds a dict of every rank
            _TORCHS_DEFAULT_GROUP[world_size] = _default_group_state()
        return
    if _DIRECT_GROUPS:
        _make_default_group(backend, rank, world_size, store, make_backend)
        return
    count = group_count()
    try:
        _make_default_group(backend, rank, world_size, store, make_backend)
        same = _default_group_state() == _TORCHS_DEFAULT_GROUP[world_size]
    except Exception:  # noqa: BLE001 - a name this torch lacks: torch's way from now on
        same = False
    _DIRECT_GROUPS = same
    if not same:
        _undo_default_group(count)
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, store=store)


def _undo_default_group(count: int) -> None:
    """Back to no group at all, however much of the default group was made
    (before it, the world had no group to keep)."""
    dist = _c10d()
    world = dist._world
    try:
        if dist.is_initialized():
            dist.destroy_process_group()
    finally:
        for name in _PER_THREAD_NEW:  # every container _World keeps
            getattr(world, name).clear()
        if world.default_pg is not None:
            dist._update_default_pg(None)
        dist._unregister_all_process_groups()
        set_group_count(count)


_DIRECT_GROUPS: bool | None = None  # None: not checked yet (NOTE [compat: default group made directly])
_TORCHS_DEFAULT_GROUP: dict[int, Any] = {}  # world size -> _default_group_state() of torch's own


def _make_default_group(backend: str, rank: int, world_size: int, store: Any,
                        make_backend: Callable[[int, int, str], Any]) -> None:
    import torch

    dist = _c10d()
    world = dist._world
    if world.default_pg is not None:
        raise ValueError("trying to initialize the default process group twice!")
    devices, config, kind = _backend_config(backend)
    name = dist._process_group_name([], use_hashed_name=False)
    prefix_store = dist.PrefixStore(f"{name}/", store)
    pg = dist.ProcessGroup(prefix_store, rank, world_size)
    pg._set_default_backend(kind)
    made = make_backend(rank, world_size, name)
    for device in devices:
        pg._register_backend(device, kind, made)
    pg._set_group_name(name)
    pg._set_group_desc("default_pg")
    attach_group_hooks(pg)
    world.pg_map[pg] = (backend, prefix_store)
    world.pg_names[pg] = name
    world.pg_backend_config[pg] = config
    dist._register_process_group(name, pg)
    tag = f"ptd:{name}"
    world.tags_to_pg.setdefault("", []).append(pg)
    world.tags_to_pg.setdefault(tag, []).append(pg)
    world.pg_to_tag[pg] = tag
    dist._update_default_pg(pg)
    world.pg_group_ranks[pg] = {i: i for i in range(world_size)}
    dist._backend = backend
    dist._default_pg_init_method = None
    if "torch._dynamo" in sys.modules:  # as init_process_group does
        torch._dynamo.trace_rules.clear_lru_cache()


@functools.cache
def _backend_config(backend: str) -> tuple[list[Any], str, Any]:
    """The devices a plugin backend serves, its ``BackendConfig`` as
    registered, and its backend type; it must serve every device with one
    backend, as ours does."""
    import torch

    dist = _c10d()
    config = dist.BackendConfig(dist.Backend(backend))
    by_device = config.get_device_backend_map()
    if set(by_device.values()) != {backend}:
        raise ValueError(f"{backend!r} does not serve every device itself: {by_device}")
    return [torch.device(d) for d in by_device], str(config), dist.Backend.backend_type_map[backend]


def _default_group_state() -> Any:
    """What torch's ``init_process_group`` leaves behind, as comparable
    values: every ``_World`` property, the default group's own state and the
    module globals it sets. Groups, stores and backends are described by
    type; the group's name by its place (the names differ between worlds)."""
    dist = _c10d()
    world = dist._world
    pg = world.default_pg
    name = pg.group_name

    def described(value: Any) -> Any:
        if value is pg:
            return "<the default group>"
        if isinstance(value, str):
            return value.replace(name, "<name>") if value == name or value.endswith((":" + name, "/" + name)) else value
        if isinstance(value, dict):
            return "dict", sorted((repr(described(k)), repr(described(v))) for k, v in value.items())
        if isinstance(value, (list, tuple)):
            return type(value).__name__, [described(v) for v in value]
        if value is None or isinstance(value, (bool, int, float)):
            return value
        return type(value).__name__

    def counted(value: Any) -> Any:  # the group counter, from this group's name on
        return value - int(name) if isinstance(value, int) and name.isdigit() else value

    properties = sorted(n for n in dir(type(world)) if isinstance(getattr(type(world), n, None), property))
    state = {n: described(getattr(world, n)) for n in properties if n not in ("group_count", "pg_config_info")}
    state["group_count"] = counted(world.group_count)
    if "pg_config_info" in properties:
        state["pg_config_info"] = described([{k: counted(v) if k == "group_count" else v for k, v in info.items()}
                                             for info in world.pg_config_info])
    state["<group>"] = described([
        pg.size(), pg.group_name, pg.group_desc, str(pg.bound_device_id), pg._get_backend_name(),
        sorted((str(d), type(pg._get_backend(d)).__name__) for d in pg._device_types),
        dist._resolve_process_group(pg.group_name) is pg,
    ])
    state["<module>"] = described([dist._backend, dist._default_pg_init_method, dist.is_initialized()])
    return state


# -- backends --------------------------------------------------------------------


@_door("register torch's stock 'fake' backend")
@functools.cache
def register_stock_fake() -> Any:
    """torch registers its stock ``fake`` backend only when this test module
    is imported (2.11-2.15.0); returns ``FakeProcessGroup.Options``."""
    import torch.testing._internal.distributed.fake_pg  # noqa: F401
    from torch._C._distributed_c10d import FakeProcessGroup

    return FakeProcessGroup.Options


def skip_flight_recorder_hook(name: str) -> None:
    """NOTE [compat: Flight Recorder hook] torch 2.15 attaches a Python
    ``FlightRecorderHook`` to every group of a backend it does not know to
    record itself (``distributed_c10d._FR_SELF_RECORDING_BACKENDS``): on a
    fake backend, a cost on every collective, and a warning at every rank
    switch of an exact world. fakepg is put with ``fake`` there (a fake world
    writes its own dumps: ``--fake-world-trace-dir``). Before 2.15 there is
    no such hook and nothing to do."""
    backends = getattr(_c10d(), "_FR_SELF_RECORDING_BACKENDS", None)
    if isinstance(backends, set):
        backends.add(name)


def attach_group_hooks(pg: Any) -> None:
    """The hooks torch 2.15's ``_new_process_group_helper`` attaches to every
    group it makes (``HealthCheckHook``), for a default group made directly;
    none before 2.15."""
    hook = getattr(sys.modules["torch._C._distributed_c10d"], "HealthCheckHook", None)
    if hook is not None:
        hook.attach(pg)


@_door("route c10d's backend plugins to the fake world")
def swap_backend_creator(name: str, creator: Callable[..., Any] | None) -> Any:
    """NOTE [compat: backend plugins] Point the c10d backend ``name`` at
    ``creator`` (extended API) through ``Backend._plugins``, or remove it
    (None); returns what was there, for ``restore_backend_creator``. Checked
    2.11-2.15.0; missing ``_plugins`` raises, so a world on a torch without it
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
# ``_init_device_mesh`` in world.py knows how to serve, by torch release.
_MESH_GROUP_PARAMETERS = (
    ("sub_layout", "rank_map", "dim_name", "backend_override"),  # 2.11-2.15.0
    ("sub_layout", "rank_map", "dim_name", "backend_override", "preserve_rank_order"),  # 2.15.0
)


def mesh_group_factory() -> tuple[Any, Any] | None:
    """NOTE [compat: mesh groups] ``DeviceMesh._init_one_process_group`` (a
    staticmethod) and ``_MeshLayout``, which ``_init_device_mesh`` in world.py
    uses to create only this rank's groups. Present in 2.11-2.15.0; 2.15 adds
    ``preserve_rank_order``. None when either is missing or the factory takes
    parameters not listed in ``_MESH_GROUP_PARAMETERS``: the mesh is then
    built by torch's stock path (all groups, slower at scale, same result)."""
    import inspect

    from torch.distributed import device_mesh as dm

    mesh_cls = getattr(dm, "DeviceMesh", None)
    layout_cls = getattr(dm, "_MeshLayout", None)
    original = vars(mesh_cls).get("_init_one_process_group") if mesh_cls is not None else None
    if layout_cls is None or not isinstance(original, staticmethod):
        return None
    if tuple(inspect.signature(original.__func__).parameters) not in _MESH_GROUP_PARAMETERS:
        return None
    return mesh_cls, layout_cls


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


def share_sharding_decisions() -> Any:
    """NOTE [compat: sharding decisions across worlds] DTensor decides how
    each op's inputs and outputs are sharded (``ShardingPropagator.
    propagate_op_sharding_non_cached``, 2.11-2.15.0), the bulk of a DTensor
    program's Python, and caches the decisions per thread, keyed by the op's
    schema. Every world clears those caches (their entries hold the world's
    meshes, whose groups die with it), so each test and each rank of an exact
    world decided everything afresh. While a world is up, decisions go through
    ``_SHARED`` instead: kept across worlds and threads, keyed by the schema
    and the caller's coordinate on the mesh (some decisions compute this
    rank's local shape), and handed out with the caller's own mesh in place of
    the one they were made with. DeviceMesh equality ignores the rank and the
    groups, so a later world's equal mesh finds them. Returns what
    ``unshare_sharding_decisions`` needs; None when DTensor is not loaded
    (or lacks these names) and nothing was changed."""
    api = sys.modules.get("torch.distributed.tensor._api")
    propagator = getattr(getattr(getattr(api, "DTensor", None), "_op_dispatcher", None), "sharding_propagator", None)
    decide = getattr(propagator, "propagate_op_sharding_non_cached", None)
    cached = getattr(propagator, "propagate_op_sharding", None)
    # What the propagator's own module checks before it caches.
    tracing = getattr(sys.modules.get(type(propagator).__module__), "_are_we_tracing", None)
    spec = getattr(sys.modules.get("torch.distributed.tensor._dtensor_spec"), "DTensorSpec", None)
    if decide is None or cached is None or tracing is None or spec is None:
        return None
    shared = _SHARED.bind(decide, propagator, tracing, spec)
    names = ("propagate_op_sharding_non_cached", "propagate_op_sharding")
    saved = (propagator, {n: vars(propagator)[n] for n in names if n in vars(propagator)})
    propagator.propagate_op_sharding_non_cached = shared
    # The per-thread cache in front of it calls what it was made with: make
    # one of the same kind around the shared decisions (cleared per world).
    propagator.propagate_op_sharding = type(cached)(shared)
    return saved


def unshare_sharding_decisions(saved: Any) -> None:
    """Put the propagator back as it was, and let the decisions made in this
    world stop holding its meshes (and through them its groups)."""
    if saved is None:
        return
    propagator, attributes = saved
    for name in ("propagate_op_sharding_non_cached", "propagate_op_sharding"):
        if name in attributes:
            setattr(propagator, name, attributes[name])
        else:
            vars(propagator).pop(name, None)
    _SHARED.detach_fresh()


class _SharedShardingDecisions:
    """The decisions behind ``share_sharding_decisions``."""

    # Past this many decisions, start over: a bound on memory, not a cache
    # policy (a suite's distinct schemas are far fewer).
    LIMIT = 1 << 16

    def __init__(self) -> None:
        self.entries: dict[tuple[Any, ...], Any] = {}
        self.fresh: list[tuple[Any, ...]] = []  # made in the world that is up: they hold its meshes
        self.spec: type | None = None  # DTensorSpec, once bound

    def bind(self, decide: Callable[[Any], Any], propagator: Any, tracing: Callable[[], bool],
             spec: type) -> Callable[[Any], Any]:
        """``decide`` (the propagator's own), sharing its decisions."""
        self.spec = spec
        tables = [getattr(propagator, n) for n in ("op_strategy_funcs", "op_to_rules",
                                                   "op_single_dim_strategy_funcs") if hasattr(propagator, n)]

        def shared(op_schema: Any) -> Any:
            mesh = _first_mesh((op_schema.args_schema, op_schema.kwargs_schema), spec)
            if mesh is None or tracing():
                return decide(op_schema)
            coordinate = mesh.get_coordinate()
            key = (op_schema, None if coordinate is None else tuple(coordinate))
            # The op's rules as they are now: register_sharding may replace them.
            rules = [table.get(op_schema.op) for table in tables]
            try:
                found = self.entries.get(key)
            except TypeError:  # unhashable arguments (symbolic shapes)
                return decide(op_schema)
            if found is not None and all(a is b for a, b in zip(found[0], rules)):
                try:
                    return _map_meshes(found[1], lambda m: m if m is mesh else _same(m, mesh), spec)
                except LookupError:  # made on another mesh too: decide afresh
                    return decide(op_schema)
            decision = decide(op_schema)
            if not _meshes_only_in_specs(decision, spec, type(mesh)):
                return decision  # holds a mesh _map_meshes would not replace: never shared
            if len(self.entries) >= self.LIMIT:
                self.entries.clear()
                self.fresh.clear()
            self.entries[key] = (rules, decision)
            self.fresh.append(key)
            return decision

        return shared

    def detach_fresh(self) -> None:
        """Replace the meshes in the decisions made since the last call by
        copies that compare equal and hold no groups."""
        if not self.fresh:
            return
        spec = self.spec
        assert spec is not None  # decisions are made only once bound
        copies: dict[int, Any] = {}

        def detached(mesh: Any) -> Any:
            copy_ = copies.get(id(mesh))
            if copy_ is None:
                copy_ = copies[id(mesh)] = _detached_mesh(mesh)
            return copy_

        for key in self.fresh:
            found = self.entries.pop(key, None)
            if found is not None:
                rules, decision = found
                self.entries[_map_meshes(key, detached, spec)] = (rules, _map_meshes(decision, detached, spec))
        self.fresh.clear()


_SHARED = _SharedShardingDecisions()


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
        new = _shallow_copy(obj)
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
        new = _shallow_copy(obj)
        for name in [n for n in vars(new) if isinstance(getattr(type(obj), n, None), functools.cached_property)]:
            del vars(new)[name]  # computed from the original's specs (OutputSharding.mesh)
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


def _shallow_copy(obj: Any) -> Any:
    new = object.__new__(type(obj))
    vars(new).update(vars(obj))
    return new


def _detached_mesh(mesh: Any) -> Any:
    """A copy of ``mesh`` that compares equal to it and holds no process
    groups or other meshes (DeviceMesh equality reads neither)."""
    from torch.distributed import ProcessGroup
    from torch.distributed.device_mesh import DeviceMesh

    new = _shallow_copy(mesh)  # not copy.copy: DeviceMesh pickles itself by its groups
    for name, value in list(vars(new).items()):
        if isinstance(value, (DeviceMesh, ProcessGroup)):
            setattr(new, name, None)
        elif isinstance(value, (dict, list)) and any(
            isinstance(v, (DeviceMesh, ProcessGroup)) for v in (value.values() if isinstance(value, dict) else value)
        ):
            setattr(new, name, type(value)())
    return new


# -- torch.compile -------------------------------------------------------------------


def dynamo_frames() -> int:
    """NOTE [compat: compiled code] How many frames dynamo has compiled
    (``convert_frame.FRAME_COUNTER``, 2.11-2.15.0); 0 before dynamo is
    imported or where the counter is missing (then compiled code is never
    reset, and a function compiled against one world's group recompiles in
    the next until dynamo's recompile limit)."""
    convert_frame = sys.modules.get("torch._dynamo.convert_frame")
    return int(getattr(convert_frame, "FRAME_COUNTER", 0))


@_door("drop torch.compile's code compiled in a world that is gone")
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


@_door("give each rank of an exact world its own c10d state")
def install_thread_local_world() -> Any:
    """NOTE [compat: per-rank c10d state] c10d keeps a process's groups in the
    module global ``distributed_c10d._world`` (a ``_World``), read at every
    call. An exact world runs each rank on its own thread, so the global is
    replaced by a ``_World`` whose state is per thread, as torch's own
    MultiThreadedTestCase does (its ThreadLocalWorld); the properties made
    per thread are the ones ``_World`` defines with module-global state,
    and every attribute ``_World.__init__`` sets (2.11 to 2.15.0). Functional collectives find groups by name in a C++ registry,
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

    settable = {f"_per_thread_{name}": value for name, value in _PER_THREAD_SET.items()}
    containers = [(f"_per_thread_{name}", new) for name, new in _PER_THREAD_NEW.items()]

    def init(self: Any) -> None:
        # _World.__init__ first: whatever it sets (2.15 added
        # _pg_flight_recorder_hooks) is per thread, as this __dict__ is.
        world_cls.__init__(self)
        state = self.__dict__  # this thread's
        state.update(settable)
        for stored, new in containers:
            state[stored] = new()

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


def default_device() -> Any:
    """NOTE [compat: default device] ``torch.get_default_device()``, which
    costs about 8 us (two imports, a walk of the mode stack) and is asked at
    every exact run on every rank's thread. It is cpu unless this thread has a
    device context (``torch._GLOBAL_DEVICE_CONTEXT``, set by
    ``set_default_device``) or a mode on its torch-function mode stack
    (2.11-2.15.0): torch is asked only then, or when either name is missing."""
    import torch

    context = getattr(torch, "_GLOBAL_DEVICE_CONTEXT", None)
    modes = getattr(torch._C, "_len_torch_function_stack", None)
    if context is not None and modes is not None and getattr(context, "device_context", None) is None and not modes():
        return _cpu()
    return torch.get_default_device()


@functools.cache
def _cpu() -> Any:
    import torch

    return torch.device("cpu")


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
