"""One rank of a real world: the same test, on gloo or NCCL, in its own process.

NOTE [Real ranks]
``pytest --fake-world-real`` runs a fake-world test on real processes too.
Each process is one rank (torchrun's ``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``), and its world is a ``RealWorld``: the default group and
every group after it are made by torch as usual, on our ``fakepg`` backend,
whose groups here each hold the real gloo (CPU) or NCCL (CUDA) backend torch
would have made. Every call is checked, counted, recorded and faulted by the
same C++ as in a fake world, then forwarded unchanged (csrc/backend.hpp), so
the ledger of a real rank is recorded exactly as a fake rank's is, and
``fail=``/``world.fail()`` fire on real ranks. The store is the rendezvous
store torchrun's agent serves, one prefix per world; the mesh is torch's own
``init_device_mesh`` (every rank makes every group, as on a cluster).
``dist.get_backend()`` says ``fakepg``, as in a fake world; the backend
object's ``name()`` says ``gloo`` or ``nccl``.
"""

from __future__ import annotations

import datetime
import os
from typing import TYPE_CHECKING, Any

from .. import _backend, _compat, process_state, world as _world
from ..spec import WorldSpec

if TYPE_CHECKING:
    from torch.distributed import Store
    from torch.distributed.device_mesh import DeviceMesh

# The backend a real world runs on, by its device (torch's own default).
BACKENDS = {"cpu": "gloo", "cuda": "nccl"}


class RealWorld(_world.FakeWorld):
    """This process's rank of a real world of ``spec.world_size`` processes,
    over ``store`` (shared by every rank: the caller gives each world a
    prefix of its own). Reads like a FakeWorld: ``rank``, ``pg``, ``mesh``,
    ``collectives``, ``fail()``, ``memory``."""

    VALUES = ("uniform", "copy", "exact")  # each process runs its own rank whatever the values

    def __init__(self, spec: WorldSpec, store: Store, timeout: float) -> None:
        super().__init__(spec)
        self._base_store = store
        self._timeout = datetime.timedelta(seconds=timeout)

    @property
    def exact(self) -> bool:
        return False  # each process is one rank, running its own program

    @property
    def backend(self) -> str:
        return BACKENDS[self.spec.device]

    def start(self) -> RealWorld:
        import torch.distributed as dist

        if self._up:
            raise RuntimeError("this RealWorld is already up")
        if dist.is_initialized() or _world._running_world() is not None:
            raise RuntimeError("cannot start a real world while another world or default group is up")
        spec = self.spec
        _backend.register(_world._create_backend)
        self._begin()
        try:
            self._saved["client_state"] = process_state.Held(spec.per_rank_modules, torch=False)
            if spec.device == "cuda":
                import torch

                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", spec.rank)))
            self._store = self._base_store
            self._saved["meshes"] = _compat.patching.install(_compat.device_mesh.meshes_of_this_world())
            self._serve(_backend.load().WorldState("copy", spec.record), real=self._real_backend)
            _compat.c10d.set_group_count(self._agreed_group_count())
            dist.init_process_group(backend=f"{spec.device}:{_backend.BACKEND_NAME}", rank=spec.rank,
                                    world_size=spec.world_size, store=self._store, timeout=self._timeout)
            self._pg = _compat.c10d.default_group()
            if spec.mesh_shape is not None:
                self._mesh = self._torch_mesh(spec.mesh_shape, spec.mesh_dim_names)
            for fault in spec.faults:
                self._arm(fault)
        except BaseException:
            self.stop()
            raise
        return self

    def device_mesh(self) -> DeviceMesh:
        self._require(None, "device_mesh")
        if self._mesh is not None:
            return self._mesh
        if self._flat_mesh is None:
            self._flat_mesh = self._torch_mesh((self.world_size,), None)
        return self._flat_mesh

    def _torch_mesh(self, shape: tuple[int, ...], names: tuple[str, ...] | None) -> DeviceMesh:
        from torch.distributed.device_mesh import init_device_mesh

        return init_device_mesh(self.spec.device, shape, mesh_dim_names=names)

    def _real_backend(self, opts: Any) -> Any:
        """The backend torch would make for a group (``opts``: c10d's
        ``_DistributedBackendOptions``): gloo on CPU, NCCL on CUDA."""
        if self.spec.device == "cuda":
            return _compat.c10d.nccl_backend(opts)
        import torch.distributed as dist

        return dist.ProcessGroupGloo(opts.store, opts.group_rank, opts.group_size, timeout=opts.timeout)

    def _agreed_group_count(self) -> int:
        """The first group number every rank can use: torch names groups from
        a per-process counter that worlds carry on (NOTE [Group names]), and
        the processes of a real world may have made different numbers of
        groups before it; the ranks take the largest."""
        store, n = self._store, self.world_size
        assert store is not None
        store.set(f"pytest-fakepg/groups/{self.rank}", str(self._first_group()))
        keys = [f"pytest-fakepg/groups/{r}" for r in range(n)]
        store.wait(keys, self._timeout)
        return max(int(store.get(key)) for key in keys)

    def __repr__(self) -> str:
        s = self.spec
        mesh = f", mesh={s.mesh_id}" if s.mesh_shape else ""
        return f"<RealWorld rank {s.rank} of {s.world_size}{mesh} on {self.backend}, {'up' if self._up else 'down'}>"
