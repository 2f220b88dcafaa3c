"""c10d: process groups, backends, the default group's parts, and the
per-thread state of an exact world's ranks."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._door import door

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


@door("find the default process group")
def default_group() -> ProcessGroup:
    """``_get_default_group``: the default group object (2.11-2.15.0)."""
    return _c10d()._get_default_group()


def group_descriptions() -> dict[str, str]:
    """Group name -> description (``mesh_tp``, ``default_pg``, ...) of every
    registered group, read from ``_world.pg_names``; {} if missing. A group
    made without one has "" here (c10d says "undefined", 2.11-2.15.0)."""
    names = getattr(_c10d()._world, "pg_names", {})
    return {name: _described(getattr(pg, "group_desc", "")) for pg, name in names.items()}


def _described(desc: str) -> str:
    return "" if desc == "undefined" else desc


def undo_default_group(count: int) -> None:
    """Back to no group at all, however much of the default group was made
    (before it, the world had no group to keep), the group counter at
    ``count``."""
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




def make_default_group(backend: str, rank: int, world_size: int, store: Any,
                       make_backend: Callable[[int, int, str], Any]) -> None:
    """What torch's ``init_process_group`` does for a backend of our own
    (``make_backend(rank, size, name)`` making its backend): the calls
    ``_new_process_group_helper`` makes for a plugin backend whose devices
    share one backend, registered as it registers it (2.11-2.15.0; 2.15 also
    attaches its HealthCheckHook). NOTE [The default group made directly]
    (``_default_group.py``) says when it is trusted."""
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


def default_group_state() -> Any:
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


@door("register torch's stock 'fake' backend")
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


@door("route c10d's backend plugins to the fake world")
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


# -- exact worlds ------------------------------------------------------------------


@door("give each rank of an exact world its own c10d state")
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


def sequence_numbers_for(backend_type: type) -> tuple[Any, dict[str, Any]]:
    """(owner, {name: replacement}): ``ProcessGroup._get_sequence_number_for_group``
    answering for groups whose CPU backend is a ``backend_type`` too.

    NOTE [Sequence numbers of custom backends] c10d's ProcessGroup answers
    only for gloo, NCCL, XCCL and UCC groups and refuses every other backend
    before asking it (2.11-2.15.0); fakepg keeps a counter per group (see
    backend.hpp), which this asks directly. Other groups get torch's answer."""
    import torch
    import torch.distributed as dist

    original = dist.ProcessGroup._get_sequence_number_for_group

    def get_sequence_number_for_group(pg: Any) -> int:
        try:
            backend = pg._get_backend(torch.device("cpu"))
        except RuntimeError:  # a group with no CPU backend is not fakepg's
            backend = None
        if isinstance(backend, backend_type):
            return backend._get_sequence_number_for_group()
        return original(pg)

    return dist.ProcessGroup, {"_get_sequence_number_for_group": get_sequence_number_for_group}



@door("let a thread a rank starts act as that rank")
def thread_world_state() -> dict[str, Any]:
    """What this thread's c10d state is (NOTE [compat: per-rank c10d state]):
    the per-thread ``_World``'s attributes, and the groups by name."""
    return dict(_c10d()._world.__dict__)


@door("let a thread a rank starts act as that rank")
def adopt_thread_world_state(state: dict[str, Any]) -> None:
    """This thread shares the c10d state of the thread ``state`` was read in:
    the same containers (groups this thread makes are that rank's too, as
    in one process), and every group registered by name in C++'s per-thread
    registry (``_register_process_group``, 2.11-2.15.0), where functional
    collectives and DTensor resolve them."""
    import torch

    _c10d()._world.__dict__.update(state)
    register = torch._C._distributed_c10d._register_process_group
    for pg, name in state.get("_per_thread_pg_names", {}).items():
        register(name, pg)


def quiet_backend_error_logs() -> None:
    """c10d's ``_exception_logger`` logs every exception a collective raises,
    at DEBUG, to its logger ``c10d_logger._c10d_logger`` (2.11-2.15.0), which
    pytest captures: one line per rank an exact world stopped, under the
    failure that is already the test's. A filter on that logger drops the
    records of errors the fakepg backend raised ("fakepg: ..."); installed
    once. Nothing happens when the logger is missing."""
    logger = getattr(sys.modules.get("torch.distributed.c10d_logger"), "_c10d_logger", None)
    if logger is None or any(getattr(f, "_fakepg", False) for f in logger.filters):
        return

    def keep(record: Any) -> bool:
        msg = record.msg
        return not (isinstance(msg, dict) and str(msg.get("error", "")).startswith("fakepg: "))

    keep._fakepg = True  # type: ignore[attr-defined]
    logger.addFilter(keep)


@functools.cache
@door("serve every backend name with the fake world's")
def any_backend_served() -> tuple[Any, dict[str, Any]]:
    """NOTE [Any backend name is the world's]
    Training code asks for groups of a named backend: Megatron's
    ``initialize_model_parallel`` makes a gloo group beside each NCCL one
    (``new_group(ranks, backend="gloo")``), DeepSpeed and others name
    "nccl" or "cpu:gloo,cuda:nccl". In a fake world a real gloo group
    connects over the world's store to ranks that do not exist, and waits for
    them until its timeout (30 minutes). While a world is up, every group
    made through ``new_group`` (and ``new_subgroups``, DeviceMesh's backend
    overrides: all reach ``_new_group_with_tag``, 2.11-2.15.0) is the world's
    own backend, with the same collectives, records and faults as any other;
    the backend's options are dropped with its name. (owner, {name:
    replacement}) for the patch engine."""
    import inspect

    c10d = _c10d()
    original = c10d._new_group_with_tag
    parameters = list(inspect.signature(original).parameters)
    at_backend, at_options = parameters.index("backend"), parameters.index("backend_options")

    @functools.wraps(original)
    def new_group_with_tag(*args: Any, **kwargs: Any) -> Any:
        args = list(args)
        for index, name in ((at_backend, "backend"), (at_options, "backend_options")):
            if index < len(args):
                args[index] = None
            kwargs.pop(name, None)
        return original(*args, **kwargs)

    return c10d, {"_new_group_with_tag": new_group_with_tag}


def nccl_backend(opts: Any) -> Any:
    """The NCCL backend ``new_group`` makes for a group, from c10d's
    ``_DistributedBackendOptions`` (its options' ``_timeout``, 2.11-2.15.0):
    what a real world's CUDA groups forward to (NOTE [Real ranks])."""
    import torch.distributed as dist

    options = dist.ProcessGroupNCCL.Options()
    options.is_high_priority_stream = False
    options._timeout = opts.timeout
    options.global_ranks_in_group = opts.global_ranks_in_group
    options.group_name = opts.group_id
    return dist.ProcessGroupNCCL(opts.store, opts.group_rank, opts.group_size, options)
