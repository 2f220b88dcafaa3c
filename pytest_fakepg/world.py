"""FakeWorld: stand a fake distributed world up, and take it down without a
trace. Usable without pytest.

This is the only module that knows torch's global distributed state. torch is
imported when a world starts, not when this module is imported, so loading
the pytest plugin costs nothing in runs that never use a fake world.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from . import _backend
from .records import OP_NAMES, CollectiveLog
from .spec import (
    ALL_OPS,
    DEFAULT_VALUES,
    FAIL_AT,
    FaultSpec,
    WorldSpec,
    check_choice,
    check_nth,
    check_op,
)

# Variables a fake world must not inherit: TORCH_DISTRIBUTED_DEBUG=DETAIL
# wraps every group in a gloo-checked wrapper that fake backends cannot serve.
# TORCH_DIST_INIT_BARRIER=1 makes new_group wait in the store for every rank
# of the world, which never arrive in a fake one.
_HIDDEN_ENV = ("TORCH_DISTRIBUTED_DEBUG", "TORCH_DIST_INIT_BARRIER")

# torch names groups "0", "1", ... from a counter that destroy_process_group
# resets. Carrying the counter across worlds means no group name is ever
# reused in a process, so a DeviceMesh or DTensor kept from an earlier world
# fails to resolve its group instead of silently using the new world's.
_next_group_number = 0


class Fault:
    """An armed fault. ``disarm()`` it, or use it as a context manager."""

    __slots__ = ("_world", "_id", "spec")

    def __init__(self, world: FakeWorld, fault_id: int, spec: FaultSpec) -> None:
        self._world = world
        self._id = fault_id
        self.spec = spec

    def disarm(self) -> None:
        """Disarm the fault (a no-op once it fired, if it was one-shot)."""
        native = self._world._native
        if native is not None:
            native.disarm_fault(self._id)

    def __enter__(self) -> Fault:
        return self

    def __exit__(self, *exc: object) -> None:
        self.disarm()

    def __repr__(self) -> str:
        nth = "" if self.spec.nth is None else f", nth={self.spec.nth}"
        return f"<Fault {self.spec.op!r}{nth} at={self.spec.at!r}>"


class FakeWorld:
    """One rank of a fake distributed world, in this process.

    ``with FakeWorld(4, rank=1, mesh={"dp": 2, "tp": 2}) as world:`` brings up
    the default process group on the fake backend, a store and (if asked) a
    named DeviceMesh; leaving the block destroys every group and clears torch's
    DeviceMesh/DTensor caches, the DTensor RNG tracker and the environment
    changes, even when the block raised.

    Arguments are validated up front (``ValueError``/``TypeError`` naming the
    argument, the value and what is allowed); see :class:`WorldSpec`.
    """

    def __init__(
        self,
        world_size: int | None = None,
        *,
        rank: int = 0,
        mesh: Any = None,
        device: str = "cpu",
        values: str = DEFAULT_VALUES,
        fail: Any = None,
        fail_at: str = "issue",
        backend: str = "fakepg",
        record: bool | None = None,
    ) -> None:
        self.spec = WorldSpec.build(
            world_size,
            rank=rank,
            mesh=mesh,
            device=device,
            values=values,
            fail=fail,
            fail_at=fail_at,
            backend=backend,
            record=record,
        )
        self._reset()

    @classmethod
    def from_spec(cls, spec: WorldSpec) -> FakeWorld:
        world = cls.__new__(cls)
        world.spec = spec
        world._reset()
        return world

    def _reset(self) -> None:
        self._native: Any = None
        self._pg: Any = None
        self._store: Any = None
        self._mesh: Any = None
        self._flat_mesh: Any = None
        self._log: CollectiveLog | None = None
        self._env: dict[Any, Any] | None = None
        self._up = False

    # -- what a test reads -------------------------------------------------
    @property
    def rank(self) -> int:
        return self.spec.rank

    @property
    def world_size(self) -> int:
        return self.spec.world_size

    @property
    def device(self) -> str:
        return self.spec.device

    @property
    def values(self) -> str:
        return self.spec.values

    @property
    def backend(self) -> str:
        return self.spec.backend

    @property
    def pg(self) -> Any:
        """The default process group."""
        return self._require(self._pg, "pg")

    @property
    def store(self) -> Any:
        return self._require(self._store, "store")

    @property
    def mesh(self) -> Any:
        """The DeviceMesh asked for with ``mesh=``, or None."""
        self._require(True, "mesh")
        return self._mesh

    def device_mesh(self) -> Any:
        """The mesh asked for with ``mesh=``, else a 1-D mesh over every rank
        (made on first use)."""
        self._require(True, "device_mesh")
        if self._mesh is None:
            if self._flat_mesh is None:
                self._flat_mesh = _init_device_mesh(self.spec.device, (self.world_size,), None)
            return self._flat_mesh
        return self._mesh

    @property
    def collectives(self) -> CollectiveLog:
        return self._require(self._log, "collectives")

    def _require(self, value: Any, what: str) -> Any:
        if not self._up:
            raise RuntimeError(f"FakeWorld.{what} is only available while the world is up")
        return value

    # -- faults --------------------------------------------------------------
    def fail(self, op: str = ALL_OPS, *, nth: int | None = None, at: str = "issue") -> Fault:
        """Arm a fault: ``op`` (a collective's name, or ``"*"`` for any) raises
        ``torch.distributed.DistBackendError`` on every call, or only on its
        ``nth`` call counted from the world's start (once). ``at="wait"``
        defers the error to ``wait()``/``get_future()``."""
        spec = FaultSpec(
            check_op(op),
            None if nth is None else check_nth(op, nth),
            check_choice("at", at, FAIL_AT),
        )
        if self.spec.backend != "fakepg":
            raise ValueError(
                "FakeWorld.fail() needs the fakepg backend; torch's stock "
                "backend (backend='fake') cannot arm faults while a world is up"
            )
        self._require(True, "fail")
        return self._arm(spec)

    def _arm(self, spec: FaultSpec) -> Fault:
        code = -1 if spec.op == ALL_OPS else OP_NAMES.index(spec.op)
        fault_id = self._native.arm_fault(code, spec.nth or 0, spec.at == "wait")
        return Fault(self, fault_id, spec)

    def calls(self, op: str | None = None) -> int:
        """Calls issued so far (counted even while recording is off): of
        ``op``, or of every collective (None or "*"). This is what ``nth``
        counts."""
        if self._native is None:
            raise RuntimeError("call counts need a running world on the fakepg backend")
        op = ALL_OPS if op is None else check_op(op)
        return self._native.call_count(-1 if op == ALL_OPS else OP_NAMES.index(op))

    # -- life cycle -------------------------------------------------------
    def __enter__(self) -> FakeWorld:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> FakeWorld:
        """Bring the world up. On any error, everything done so far is undone."""
        import torch.distributed as dist

        if self._up:
            raise RuntimeError("this FakeWorld is already up")
        if not dist.is_available():
            raise RuntimeError("torch.distributed is not available in this torch build")
        if dist.is_initialized():
            raise RuntimeError(
                "cannot start a FakeWorld while a default process group exists "
                f"(backend {dist.get_backend()!r}, world size {dist.get_world_size()}); "
                "call torch.distributed.destroy_process_group() first"
            )
        if _backend._active is not None:
            raise RuntimeError("another FakeWorld is already up in this process")
        spec = self.spec
        if not device_available(spec.device):
            raise RuntimeError(
                f"device={spec.device!r} was asked for but no {spec.device} device is available"
            )
        if spec.backend == "fakepg":
            _backend.register()  # before any state changes: a build error leaves nothing
        self._env = _snapshot_env()
        self._up = True
        try:
            for name in _HIDDEN_ENV:
                os.environ.pop(name, None)
            self._store = dist.HashStore()
            self._init_default_group(dist)
            if spec.mesh_shape is not None:
                self._mesh = _init_device_mesh(spec.device, spec.mesh_shape, spec.mesh_dim_names)
            for fault in spec.faults if spec.backend == "fakepg" else ():
                self._arm(fault)
        except BaseException:
            self.stop()
            raise
        return self

    def _init_default_group(self, dist: Any) -> None:
        global _next_group_number
        spec = self.spec
        if spec.backend == "fakepg":
            self._native = _backend.load().WorldState(spec.values, spec.record)
            _backend._active = _backend.ActiveWorld(self._native, spec.world_size)
            self._log = CollectiveLog(self._native)
            options = None
        else:
            # torch registers its stock "fake" backend in this (small) module.
            import torch.testing._internal.distributed.fake_pg  # noqa: F401
            from torch._C._distributed_c10d import FakeProcessGroup

            options = FakeProcessGroup.Options()
            options.error_on_collective = bool(spec.faults)
            self._log = CollectiveLog.disabled(
                "it runs on torch's stock backend (backend='fake'), which records "
                "nothing; use backend='fakepg'"
            )
        c10d = dist.distributed_c10d
        c10d._world.group_count = _next_group_number
        dist.init_process_group(
            backend=spec.backend,
            rank=spec.rank,
            world_size=spec.world_size,
            store=self._store,
            pg_options=options,
        )
        self._pg = c10d._get_default_group()

    def stop(self) -> None:
        """Take the world down. Idempotent; runs every step even if one fails."""
        global _next_group_number
        if not self._up:
            return
        import torch.distributed as dist

        try:
            if dist.is_initialized():
                _next_group_number = max(
                    _next_group_number, dist.distributed_c10d._world.group_count
                )
                dist.destroy_process_group()
            # A body that destroyed the groups itself reset torch's counter:
            # the backend saw every name it made.
            _next_group_number = max(_next_group_number, _backend.highest_group_number + 1)
        finally:
            _backend._active = None
            _clear_torch_caches()
            _restore_env(self._env or {})
            self._pg = self._store = self._mesh = self._flat_mesh = None
            self._env = None
            self._up = False

    @property
    def is_up(self) -> bool:
        return self._up

    def __repr__(self) -> str:
        s = self.spec
        mesh = f", mesh={s.mesh_id}" if s.mesh_shape else ""
        state = "up" if self._up else "down"
        return (
            f"<FakeWorld rank {s.rank} of {s.world_size}{mesh} on {s.device}, "
            f"{s.backend}/{s.values}, {state}>"
        )


def _init_device_mesh(device: str, shape: tuple[int, ...], names: tuple[str, ...] | None) -> Any:
    """``init_device_mesh``, making only the groups this rank is in.

    NOTE [Only this rank's groups]
    torch's DeviceMesh creates every sub-group of every dimension, one
    new_group call each, so that all ranks agree on them: 196,736 calls for a
    (16, 8192, 8) mesh, seconds of work. A fake world has one rank, and only
    its own groups can ever be used, so while the mesh is built its per-dimension
    group factory is swapped for one that finds this rank's row and creates that
    group alone. Everything else (the mesh tensor, coordinates, slicing, the
    group registry) is torch's own. Where torch's internals differ from what this
    expects, the stock path runs instead.
    """
    from torch.distributed import device_mesh as dm

    mesh_cls = getattr(dm, "DeviceMesh", None)
    layout_cls = getattr(dm, "_MeshLayout", None)
    original = vars(mesh_cls).get("_init_one_process_group") if mesh_cls is not None else None
    if layout_cls is None or not isinstance(original, staticmethod):
        return dm.init_device_mesh(device, shape, mesh_dim_names=names)

    def this_ranks_group(sub_layout: Any, rank_map: Any, dim_name: str, backend_override: Any) -> Any:
        import torch.distributed as dist

        if backend_override != (None, None):
            return original.__func__(sub_layout, rank_map, dim_name, backend_override)
        ranks = _ranks_of_this_rank(layout_cls, sub_layout, rank_map, dist.get_rank(), dist.get_world_size())
        if ranks is None:
            return None
        if len(ranks) == dist.get_world_size():
            # as torch does for a default group that is not gloo
            return dist.distributed_c10d._get_default_group().group_name
        return dist.new_group(ranks=ranks, group_desc=f"mesh_{dim_name}").group_name

    mesh_cls._init_one_process_group = staticmethod(this_ranks_group)
    try:
        return dm.init_device_mesh(device, shape, mesh_dim_names=names)
    finally:
        mesh_cls._init_one_process_group = original


def _ranks_of_this_rank(
    layout_cls: Any, sub_layout: Any, rank_map: Any, rank: int, world_size: int
) -> list[int] | None:
    """The ranks of the group of mesh dimension `sub_layout` that holds `rank`,
    or None. init_device_mesh's rank map is 0..n-1 and a plain dimension is
    one (size, stride) pair: then the group is arithmetic. Anything else goes
    through torch's own layout algebra."""
    import torch

    size, stride = getattr(sub_layout, "shape", None), getattr(sub_layout, "stride", None)
    if isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride) == 1:
        size, stride = size[0], stride[0]  # a flat layout of one mode
    if (
        isinstance(size, int)
        and isinstance(stride, int)
        and rank_map.numel() == world_size
        and torch.equal(rank_map, torch.arange(world_size, dtype=rank_map.dtype))
    ):
        first = rank - (rank // stride) % size * stride
        return [first + k * stride for k in range(size)]
    groups = layout_cls([sub_layout]).remap_to_tensor(rank_map)
    row = (groups == rank).any(dim=-1).nonzero()
    return None if row.numel() == 0 else groups[int(row[0, 0])].tolist()


def device_available(device: str) -> bool:
    """Whether this process can use devices of type ``device`` ("cpu" always)."""
    if device == "cpu":
        return True
    import torch

    available = getattr(getattr(torch, device, None), "is_available", None)
    return bool(available is not None and available())


def clean_up_foreign_state() -> str | None:
    """Destroy a default process group that no FakeWorld owns (one a test
    made and left behind), with torch's caches; describe what was found.
    Costs nothing in a process that never imported torch.distributed."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return None
    if _backend._active is not None:
        return None  # a FakeWorld is up: it owns the group
    found = f"backend {dist.get_backend()!r}, world size {dist.get_world_size()}"
    dist.destroy_process_group()
    _clear_torch_caches()
    return found


def _environ_data() -> dict[Any, Any]:
    # os.environ keeps its encoded items in _data; copying and comparing that
    # dict runs at C speed, where walking os.environ decodes every item (the
    # largest cost of a world's life cycle before this).
    data = getattr(os.environ, "_data", None)
    return data if isinstance(data, dict) else dict(os.environ)


def _snapshot_env() -> dict[Any, Any]:
    return dict(_environ_data())


def _restore_env(saved: dict[Any, Any]) -> None:
    current = _environ_data()
    if current == saved:
        return
    decode = os.fsdecode if current is not os.environ else (lambda k: k)
    for key in [k for k in current if k not in saved]:
        del os.environ[decode(key)]
    for key, value in saved.items():
        if current.get(key) != value:
            os.environ[decode(key)] = decode(value)


def _clear_torch_caches() -> None:
    """Forget what torch cached about the world that just went down. Only
    modules already imported are touched: nothing is imported to clear it."""
    modules = sys.modules
    device_mesh = modules.get("torch.distributed.device_mesh")
    resources = getattr(device_mesh, "_mesh_resources", None)
    if resources is not None:
        for value in vars(resources).values():
            if isinstance(value, (list, dict)):
                value.clear()
    random = modules.get("torch.distributed.tensor._random")
    if random is not None and getattr(random, "_rng_tracker", None) is not None:
        random._rng_tracker = None
    api = modules.get("torch.distributed.tensor._api")
    if api is not None:
        propagator = api.DTensor._op_dispatcher.sharding_propagator
        for name in ("propagate_op_sharding", "_propagate_tensor_meta_cached"):
            cached = getattr(propagator, name, None)
            clear = getattr(cached, "cache_clear", None)
            if clear is not None:
                clear()
        import torch

        clear_native = getattr(torch._C, "_clear_DTensor_sharding_propagator_cache", None)
        if clear_native is not None:  # the C++ fast path's own cache
            clear_native()
