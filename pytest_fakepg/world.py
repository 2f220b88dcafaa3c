"""FakeWorld: stand a fake distributed world up, and take it down without a
trace. Usable without pytest.

This module owns "the world that is up": the running world's native state,
the factory torch calls to make each of its groups, and the group-name
counter. It is the only module that changes torch's global state (private
names go through _compat/). torch is imported when a world starts, not when
this module is imported, so loading the pytest plugin costs nothing in runs
that never use a fake world.
"""

from __future__ import annotations

import inspect
import os
import sys
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from . import _backend, _compat, _default_group, _patches, environment, garbage, process_state
from ._frames import site_source, user_line
from .errors import FakeWorldFaultWarning
from .fake import cuda as _fake_cuda
from .fake.values import Shared
from .faults import Fault
from .memory import Memory
from .mesh import init_device_mesh, labels_now
from .ops import ALL_OPS, check_op, op_code
from .records import CollectiveLog
from .spec import FAIL_AT, SIGNATURE, FaultSpec, WorldSpec, bind, check_choice, check_nth
from .store import world_store

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup, Store
    from torch.distributed.device_mesh import DeviceMesh


# torch's backend that `backend="fake"` names: groups a body asks for on it
# (torchtitan does, for size-1 mesh dimensions) are served by fakepg while a
# fakepg world is up. See NOTE [compat: backend plugins].
_STOCK_FAKE = "fake"


class _Running(NamedTuple):
    native: Any  # the compiled WorldState shared by every group of the world
    world_size: int
    world: FakeWorld
    real: Callable[[Any], Any] | None = None  # a group's real backend (NOTE [Real ranks], csrc/backend.hpp)


# The world that is up (one at a time), read by _create_backend whenever torch
# makes a group: the default group, new_group, DeviceMesh dimensions.
_running: _Running | None = None
# NOTE [Group names] torch names groups "0", "1", ... from a counter that
# destroy_process_group resets. Carrying it across worlds means no group name
# is ever reused in a process, so a DeviceMesh or DTensor kept from an earlier
# world fails to resolve its group instead of silently using this world's.
_next_group_number = 0


def _create_backend(dist_opts: Any, _backend_options: Any) -> Any:
    """The group factory torch calls for every fakepg (and, in a fakepg
    world, every "fake") group."""
    ranks = dist_opts.global_ranks_in_group
    size = dist_opts.group_size
    # A group of every rank maps group ranks to global ranks one to one: pass
    # no list, so a million ranks cost nothing.
    if _running is not None and len(ranks) == size == _running.world_size:
        ranks = []
    real = None if _running is None or _running.real is None else _running.real(dist_opts)
    return _new_backend(dist_opts.group_rank, size, dist_opts.group_id, ranks, real)


def _new_backend(rank: int, size: int, name: str, ranks: list[int] | None = None, real: Any = None) -> Any:
    """This world's backend for group ``name`` (``ranks``: its global ranks,
    none for a group of every rank); also what a default group made without
    init_process_group gets (NOTE [The default group made directly])."""
    global _next_group_number
    if _running is None:
        raise RuntimeError(
            "the fakepg backend makes groups only inside a fake world: use "
            "`with pytest_fakepg.FakeWorld(...)` or the "
            "@pytest.mark.fake_world marker instead of calling "
            "init_process_group('fakepg') yourself"
        )
    if name.isdigit():  # a body that destroys its groups resets torch's counter
        _next_group_number = max(_next_group_number, int(name) + 1)
    return _backend.load().FakeBackend(_running.native, rank, size, name, ranks or [], real)


# What a world of the other kind is called (by whether values="exact" was given).
_WRONG_KIND = (
    "ExactWorld runs every rank of the world (values='exact'); values={values!r} runs one rank: use "
    "pytest_fakepg.FakeWorld with the same arguments",
    "values='exact' runs every rank of the world: use pytest_fakepg.ExactWorld with the same arguments "
    "(FakeWorld runs one rank, with values 'uniform' or 'copy')",
)


class FakeWorld:
    """One rank of a fake distributed world, in this process.

    ``with FakeWorld(4, rank=1, mesh={"dp": 2, "tp": 2}) as world:`` brings up
    the default process group on the fake backend, a store and (if asked) a
    named DeviceMesh; leaving the block destroys every group and clears torch's
    DeviceMesh/DTensor caches, the DTensor RNG tracker, compiled code bound to
    the world's groups and the environment changes, even when the block raised.

    Takes the arguments of :meth:`WorldSpec.build` (also the marker's), or one
    :class:`WorldSpec`. They are validated up front (``ValueError``/
    ``TypeError`` naming the argument, the value and what is allowed).
    """

    # The values this kind of world runs (ExactWorld runs "exact"; a kind
    # is chosen by its class, or by factory.world_for(spec)).
    VALUES: ClassVar[tuple[str, ...]] = ("uniform", "copy")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if len(args) == 1 and not kwargs and isinstance(args[0], WorldSpec):
            self.spec = args[0]
        else:
            try:
                self.spec = WorldSpec.build(*args, **kwargs)
            except TypeError:
                bind(args, kwargs)  # a wrong keyword: say which, and the one meant
                raise
        if self.spec.values not in self.VALUES:
            raise ValueError(_WRONG_KIND[self.spec.values == "exact"].format(values=self.spec.values))
        self._native: Any = None
        self._pg: ProcessGroup | None = None
        self._store: Store | None = None
        self._mesh: DeviceMesh | None = None
        self._flat_mesh: DeviceMesh | None = None
        self._log: CollectiveLog | None = None
        self._faults: list[Fault] = []
        self._sites: list[str] | None = None
        # Batches of point-to-point calls (batch_isend_irecv): (issuing rank, or
        # -1 for the world's one, first record, end), counted as size_of counts.
        self.batches: list[tuple[int, int, int]] = []
        self._site: Callable[[], int] | None = None  # the user's line now, as an index into _sites
        self._memory: Memory | None = None
        self._assumed: set[str] = set()  # NOTE [Values fake tensors carry]
        self._shared = Shared()  # what its fake-tensor modes share: NOTE [Routing on fake tensors]
        self._ranks_per_node = 1  # LOCAL_WORLD_SIZE, decided at start (NOTE [torchrun's environment])
        self._saved: dict[str, Any] = {}
        self._up = False

    # help() and IDEs show the world's arguments: WorldSpec.build's.
    __init__.__signature__ = SIGNATURE.replace(  # type: ignore[attr-defined]
        parameters=[inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY), *SIGNATURE.parameters.values()],
        return_annotation=None,
    )

    # -- what a test reads -------------------------------------------------
    @property
    def exact(self) -> bool:
        """Whether every rank runs (``values="exact"``)."""
        return self.spec.values == "exact"

    @property
    def rank(self) -> int:
        """This rank; in an exact world, the rank whose program is running."""
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
    def tensors(self) -> str:
        """``"real"``, or ``"fake"``: the body runs on fake tensors."""
        return self.spec.tensors

    @property
    def pg(self) -> ProcessGroup:
        """The default process group."""
        return self._require(self._pg, "pg")

    @property
    def store(self) -> Store:
        """The store; one for every rank, in an exact world."""
        return self._require(self._store, "store")

    @property
    def mesh(self) -> DeviceMesh | None:
        """The DeviceMesh asked for with ``mesh=``, or None."""
        return self._require(self._mesh, "mesh")

    def device_mesh(self) -> DeviceMesh:
        """The mesh asked for with ``mesh=``, else a 1-D mesh over every rank
        (made on first use)."""
        self._require(None, "device_mesh")
        if self._mesh is not None:
            return self._mesh
        if self._flat_mesh is None:
            self._flat_mesh = init_device_mesh(self.spec.device, (self.world_size,), None)
        return self._flat_mesh

    @property
    def collectives(self) -> CollectiveLog:
        """The collectives issued: in an exact world, inside a rank's program
        this rank's, elsewhere every rank's (each record says its rank)."""
        return self._require(self._log, "collectives")

    @property
    def memory(self) -> Memory:
        """This rank's tensor memory (peak, by category, live now): tracked
        from the world's start with tensors="fake", else from the first time
        this is read. Readable after the world goes down."""
        if self._memory is not None:
            return self._memory
        self._require(None, "memory")
        self._start_memory()
        assert self._memory is not None
        return self._memory

    @property
    def assumptions(self) -> list[str]:
        """What a tensors="fake" plan assumed of values (NOTE [Values fake tensors carry])."""
        return sorted(self._assumed)

    def route(self, routing: Callable[[int, int, int], Any] | None) -> None:
        """How ``topk`` over fake values picks (NOTE [Routing on fake tensors],
        fake/values.py): ``routing(rows, n, k)`` gives each row's k indices
        in [0, n); None: balanced, row t's j-th is (t * k + j) mod n."""
        if routing is not None and not callable(routing):
            raise TypeError(f"route() takes a function (rows, n, k) -> indices of shape (rows, k), or None; got {routing!r}")
        self._shared.routing = routing

    def measured_memory(self) -> Memory | None:
        """``memory`` if this world measures it (tensors="fake", or once
        ``memory`` was read), else None."""
        return self._memory

    def _start_memory(self) -> None:
        mode = self._saved.get("tensor_mode")
        self._memory = Memory(self.spec.device, on_wait=None if mode is None else mode.router.wait)

    def _require(self, value: Any, what: str) -> Any:
        if not self._up:
            raise RuntimeError(f"FakeWorld.{what} is only available while the world is up")
        return value

    def _live_native(self, what: str) -> Any:
        if not self._up:
            raise RuntimeError(f"{what} needs a running world; this one is down")
        if self._native is None:
            raise RuntimeError(f"{what} needs a world on the fakepg backend; this one runs on torch's stock backend")
        return self._native

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
        native = self._live_native("FakeWorld.fail()")
        if spec.nth is not None:
            made = max(native.call_count(op_code(spec.op), r) for r in self._fault_ranks())
            if spec.nth <= made:
                what = "collectives" if spec.op == ALL_OPS else f"calls of {spec.op}"
                raise ValueError(
                    f"nth={spec.nth} is in the past: {made} {what} were already made in this "
                    f"world (calls count from the world's start); use nth >= {made + 1}"
                )
        return self._arm(spec)

    def _fault_ranks(self) -> list[int]:
        """The ranks a fault armed now fires on: any (-1), in a world of one
        rank."""
        return [-1]

    def _calling_rank(self) -> int:
        """The rank whose calls ``calls()`` counts; -1: every rank's."""
        return -1

    def _arm(self, spec: FaultSpec) -> Fault:
        ids = [
            (rank, self._native.arm_fault(op_code(spec.op), spec.nth or 0, spec.at == "wait", rank))
            for rank in self._fault_ranks()
        ]
        fault = Fault(self, ids, spec)
        self._faults.append(fault)
        return fault

    def calls(self, op: str | None = None) -> int:
        """Calls issued so far (counted even while recording is off): of
        ``op``, or of every collective (None or "*"). This is what ``nth``
        counts: in an exact world, per rank (this rank's inside its program,
        every rank's together elsewhere)."""
        native = self._live_native("FakeWorld.calls()")
        return native.call_count(op_code(op, "calls"), self._calling_rank())

    def unfired_faults(self) -> list[str]:
        """Why each fault armed in this world (by argument or ``fail()``)
        that was neither disarmed nor fired tested nothing. Each is reported
        once: by this call, or else as a FakeWorldFaultWarning when the world
        goes down."""
        if self._native is None:
            return []
        out = []
        for fault in self._faults:
            reason = fault._never_fired()
            if reason is not None:
                fault._reported = True
                out.append(reason)
        return out

    # -- what the consistency check reads ------------------------------------
    def record_call_sites(self) -> None:
        """Record, with every collective from now on, the line of user code
        that issued it (the first frame outside torch and this package), as
        ``file.py:LINE``: see ``call_sites()``. Costs a stack walk per call."""
        native = self._live_native("FakeWorld.record_call_sites()")
        if self._sites is None:
            self._sites = []
            self._site = site_source(self._sites)
            native.set_site_source(self._site)

    def call_sites(self) -> list[str]:
        """The call sites recorded so far; a raw record's site indexes this."""
        return list(self._sites or ())

    def group_labels(self) -> dict[str, str]:
        """Group name -> what to call it: the mesh dimension's name for a
        DeviceMesh group, else its description ("default_pg", ...); a group
        that is also a dimension of the world's mesh carries both
        ("default_pg/tp" where a dp1 x tp2 mesh's tp is the whole world)."""
        self._require(None, "group_labels")
        return labels_now(self._mesh)

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
        if _running is not None:
            raise RuntimeError("another FakeWorld is already up in this process")
        spec = self.spec
        fake_cuda = _fake_cuda.needed(spec.device, spec.tensors)
        if not fake_cuda and not environment.device_available(spec.device):
            raise RuntimeError(f"device={spec.device!r} was asked for but no {spec.device} device is available")
        if spec.backend == "fakepg":
            _backend.register(_create_backend)  # before any state changes: a build error leaves nothing
        self._begin()
        try:
            self._saved["garbage"] = garbage.fence()  # first, so that stop() always finds it
            self._saved["client_state"] = process_state.Held(spec.per_rank_modules, torch=self.exact)
            environment.put_back(dict.fromkeys(environment.HIDDEN))
            self._ranks_per_node = spec.local_world_size or environment.ranks_per_node(spec.world_size, spec.device)
            if spec.env:  # an exact world's ranks get their rank's variables as they run
                os.environ.update(environment.torchrun_env(spec.world_size, self._ranks_per_node,
                                                           None if self.exact else spec.rank))
            if fake_cuda:  # NOTE [A fake CUDA device]: a node of LOCAL_WORLD_SIZE devices
                self._at_stop(_fake_cuda.Served(self._ranks_per_node).stop)
            self._store = world_store(self)  # NOTE [A store wait in a uniform world]
            self._saved["meshes"] = _compat.patching.install(_compat.device_mesh.meshes_of_this_world())
            self._bring_up_groups()
            self._install_patches()
            for fault in spec.faults if spec.backend == "fakepg" else ():
                self._arm(fault)
            if spec.tensors == "fake":
                self._enter_fake_tensors()
                self._start_memory()
        except BaseException:
            self.stop()
            raise
        return self

    def _begin(self) -> None:
        """The process state stop() puts back, taken as the world comes up:
        from here on, stop() undoes whatever start() got to."""
        self._saved = {"env": dict(_compat.runtime.environ_data()), "excepthook": _compat.stdlib.excepthook(),
                       "dynamo_frames": _compat.dynamo.dynamo_frames()}
        self._up = True
        self._memory = None

    def _enter_fake_tensors(self) -> None:
        """From here until stop(), tensors are fake: NOTE [What runs real in
        a fake-tensor world]."""
        from .fake.mode import make_mode

        mode = make_mode(self._assumed, self.values, self._shared)
        mode.__enter__()
        self._saved["tensor_mode"] = mode

    def _bring_up_groups(self) -> None:
        """This rank's default group, and its mesh if asked for."""
        import torch.distributed as dist

        spec = self.spec
        if spec.backend == "fakepg":
            self._serve(_backend.load().WorldState(spec.values, spec.record))
            options = None
        else:
            options = _compat.c10d.register_stock_fake()()
            options.error_on_collective = bool(spec.faults)
            self._log = CollectiveLog.disabled(
                "it runs on torch's stock backend (backend='fake'), which records "
                "nothing; use backend='fakepg'"
            )
        _compat.c10d.set_group_count(_next_group_number)
        if options is None:
            _default_group.init_default_group(spec.backend, spec.rank, spec.world_size, self._store, _new_backend)
        else:
            dist.init_process_group(
                backend=spec.backend,
                rank=spec.rank,
                world_size=spec.world_size,
                store=self._store,
                pg_options=options,
            )
        self._pg = _compat.c10d.default_group()
        if spec.mesh_shape is not None:
            self._mesh = init_device_mesh(spec.device, spec.mesh_shape, spec.mesh_dim_names)

    def _serve(self, native: Any, real: Callable[[Any], Any] | None = None) -> None:
        """Make ``native`` (a WorldState) the world that is up: the one whose
        backend every fakepg group gets, and every "fake" group too; ``real``
        makes a group's real backend, on real ranks."""
        global _running
        self._native = native
        _running = _Running(native, self.spec.world_size, self, real)
        self._log = CollectiveLog(native, labels=self._labels_now)
        native.set_label_source(self._label_of)
        _compat.c10d.register_stock_fake()
        self._saved["stock_fake"] = _compat.c10d.swap_backend_creator(_STOCK_FAKE, _create_backend)

    def _mesh_here(self) -> DeviceMesh | None:
        """The world's mesh as the calling thread sees it."""
        return self._mesh

    def _labels_now(self) -> dict[str, str]:
        """What the world's groups are called, as the calling thread sees
        them (records and messages read this)."""
        return labels_now(self._mesh_here())

    def _store_wait(self, store: Any, keys: list[str], call: str, timeout: Any) -> None:
        """A wait on the world's store for ``keys``, some not set: NOTE [A
        store wait in a uniform world] (store.py)."""
        import torch.distributed as dist

        missing = [key for key in keys if not store.check([key])]
        line = user_line()
        raise dist.DistStoreError(
            f"{call}{f' at {line}' if line else ''} waits for {', '.join(map(repr, missing))}, which no rank will "
            f"set: in a {self.values} world only rank {self.rank} of {self.world_size} runs. Set the key in the "
            "test before waiting for it, or use values='exact' to run every rank"
        )

    def _label_of(self, name: str) -> str:
        """Group ``name``'s label, or "" (the backend asks, for a fault's message)."""
        return self._labels_now().get(name, "")

    def _take_groups_count(self) -> None:
        """Carry torch's group counter on before its groups are destroyed
        (NOTE [Group names])."""
        global _next_group_number
        _next_group_number = max(_next_group_number, _compat.c10d.group_count())

    @staticmethod
    def _first_group() -> int:
        """The number the next world's first group is named by."""
        return _next_group_number

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> list[Any]:
        """Run ``fn(*args, **kwargs)`` as every rank's program: only in an
        exact world (``ExactWorld.run``)."""
        raise RuntimeError(
            f"FakeWorld.run() runs every rank of an exact world; this world has "
            f"values={self.values!r} (use pytest_fakepg.ExactWorld)"
        )

    def _install_patches(self) -> None:
        """Replace what the world's standard patches (_patches.py) and the
        fake-tensor mode name while the world is up (NOTE [Patches]); stop()
        puts each original back."""
        patches = [*self._patches(), _compat.context_parallel.cpu_ring_attention()]
        if self.spec.backend == "fakepg":
            patches.append(_patches.sequence_numbers())
        self._saved["patches"] = _compat.patching.install(patches)
        self._at_stop(_compat.context_parallel.dispatcher_as_found())

    def _patches(self) -> list[tuple[Any, dict[str, Any]]]:
        """(owner, {name: replacement}) to install while the world is up."""
        objects = _patches.object_collectives(_running_world)
        fake: list[tuple[Any, dict[str, Any]]] = []
        if self.spec.tensors == "fake":
            from .fake.mode import on_real_tensors, world_patches

            objects, fake = on_real_tensors(objects), world_patches()
        return [*objects, *_patches.batch_markers(_running_world), _compat.c10d.any_backend_served(), *fake]

    def stop(self) -> None:
        """Take the world down. Idempotent; runs every step even if one fails.
        A fault that never fired is reported as a FakeWorldFaultWarning."""
        global _running
        if not self._up:
            return
        import torch.distributed as dist

        unfired = self.unfired_faults()
        saved = self._saved
        try:
            if self._memory is not None:
                self._memory.stop()
            if "tensor_mode" in saved:
                saved.pop("tensor_mode").__exit__(None, None, None)
            if dist.is_initialized():
                self._take_groups_count()
                dist.destroy_process_group()
        finally:
            _running = None
            for undo in reversed(saved.get("at_stop", [])):
                undo()
            if "stock_fake" in saved:
                _compat.c10d.restore_backend_creator(_STOCK_FAKE, _create_backend, saved["stock_fake"])
            _compat.patching.remove(saved.get("patches", []))
            _compat.patching.remove(saved.get("meshes", []))
            _compat.device_mesh.clear_mesh_registries()
            _compat.dtensor.clear_dtensor_state(every_thread=True)
            if _compat.dynamo.dynamo_frames() != saved["dynamo_frames"]:
                # Code compiled in this world guards on its groups; in the
                # next world it would only recompile, up to dynamo's limit.
                _compat.dynamo.reset_compiled_code()
            _compat.stdlib.set_excepthook(saved["excepthook"])  # init_process_group wraps it
            if "client_state" in saved:
                saved["client_state"].restore()
            environment.restore(saved["env"])
            if self._native is not None:
                self._native.set_site_source(None)
                self._native.set_label_source(None)
                self._native.set_mismatch_source(None)
            self._pg = self._store = self._mesh = self._flat_mesh = None
            self._saved = {}
            self._up = False
            how = saved.pop("garbage", "off")
            saved.clear()
            garbage.collect(how)
        for reason in unfired:
            warnings.warn(FakeWorldFaultWarning(reason), stacklevel=2)

    def _at_stop(self, undo: Callable[[], None]) -> None:
        """Have ``undo()`` run when the world goes down, after its groups
        (last registered, first run): what a layer set up at start."""
        self._saved.setdefault("at_stop", []).append(undo)

    def __repr__(self) -> str:
        s = self.spec
        mesh = f", mesh={s.mesh_id}" if s.mesh_shape else ""
        state = "up" if self._up else "down"
        tensors = ", fake tensors" if s.tensors == "fake" else ""
        return (
            f"<FakeWorld rank {s.rank} of {s.world_size}{mesh} on {s.device}, "
            f"{s.backend}/{s.values}{tensors}, {state}>"
        )


def _running_world() -> _Running | None:
    return _running
