"""ExactWorld: a FakeWorld whose every rank runs (``values="exact"``)."""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import _backend, _compat, _default_group, _patches, environment, records
from ..environment import PER_RANK, rank_env
from ..memory import Memory
from ..records import CollectiveLog
from ..spec import WorldSpec
from ..mesh import init_device_mesh, labels_now
from ..world import FakeWorld, _new_backend, _running_world
from ..store import poll, world_store
from .sharing import SharedPlanning

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup
    from torch.distributed.device_mesh import DeviceMesh

# Serialises the teardown of an exact world's ranks (_rank_program).
_TEARDOWN = threading.Lock()

MEMORY_OF_REAL_RANKS = (
    "the memory fixture measures each rank's memory in an exact world with tensors='fake'; with real "
    "tensors (this world) it does not measure yet: use tensors='fake', or values='uniform' or 'copy'"
)


@contextlib.contextmanager
def _fake_tensors(device: str, assumed: set[str], shared: Any) -> Any:
    """NOTE [Exact worlds on fake tensors]
    torch's tensor modes are per thread, so in an exact world with
    tensors="fake" each rank's program runs under a mode of its own (NOTE
    [What runs real in a fake-tensor world]), entered on the rank's thread
    when its program starts and left when it ends, with its own memory
    tracker: every rank measures its own memory. Collectives reach the
    exact semantics with meta tensors, which exchange shapes and dtypes; a
    send and a recv that disagree on them fail naming both ranks. Object
    collectives (pipelining's shape inference sends its metadata this way)
    run on real tensors, their bytes exchanged for real
    (``exchanged_for_real`` in fake/mode.py)."""
    from ..fake.mode import make_mode

    from ..fake.cuda import rank_modes

    mode = make_mode(assumed, shared=shared)
    with mode, rank_modes():
        memory = Memory(device, on_wait=mode.router.wait)
        try:
            yield memory
        finally:
            memory.stop()


class ExactWorld(FakeWorld):
    """Every rank of the world runs its program, one at a time, each on its
    own thread with its own default group, mesh and log (NOTE [compat:
    per-rank c10d state]); what differs per rank is read inside a rank's
    program. Takes FakeWorld's arguments; ``values`` is "exact"."""

    VALUES = ("exact",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if not (len(args) == 1 and not kwargs and isinstance(args[0], WorldSpec)):
            kwargs.setdefault("values", "exact")
        super().__init__(*args, **kwargs)
        # What each rank's thread sees, and the group labels each rank had,
        # kept for reports.
        self._local = threading.local()
        self._labels: dict[str, str] = {}
        self._stop: Callable[[int, BaseException], None] | None = None  # set by runner.run for its length
        # The ranks that run, in order: every rank, or those NOTE [Hybrid
        # worlds] picks; a rank's slot in the scheduler is its place here.
        self.running: list[int] = list(self.spec.running or range(self.spec.world_size))
        self._memories: dict[int, Memory] = {}  # each running rank's, with tensors="fake"
        self._mismatched: tuple[int, int] | None = None  # the ranks of the last mismatch the backend found
        self._worded: set[str] = set()  # the words _word_mismatch gave the backend, to know its errors again

    __init__.__signature__ = FakeWorld.__init__.__signature__  # type: ignore[attr-defined]

    # -- what differs per rank -----------------------------------------------
    @property
    def rank(self) -> int:
        """The rank whose program is running."""
        return self._this_rank("rank").rank

    @property
    def pg(self) -> ProcessGroup:
        """The running rank's default process group."""
        return self._this_rank("pg").pg

    @property
    def mesh(self) -> DeviceMesh | None:
        """The running rank's DeviceMesh asked for with ``mesh=``, or None."""
        return self._this_rank("mesh").mesh

    def device_mesh(self) -> DeviceMesh:
        """The running rank's mesh asked for with ``mesh=``, else a 1-D mesh
        over every rank (made on first use)."""
        local = self._this_rank("device_mesh")
        if local.mesh is not None:
            return local.mesh
        if local.flat_mesh is None:
            local.flat_mesh = init_device_mesh(self.spec.device, (self.world_size,), None)
        return local.flat_mesh

    @property
    def collectives(self) -> CollectiveLog:
        """Inside a rank's program that rank's collectives, elsewhere every
        rank's (each record says its rank)."""
        if getattr(self._local, "rank", None) is not None:
            return self._local.log
        return self._require(self._log, "collectives")

    @property
    def memory(self) -> Memory:
        """Inside a rank's program that rank's memory, measured from its
        program's start: with tensors="fake" every running rank measures its
        own (NOTE [Exact worlds on fake tensors])."""
        if self.spec.tensors != "fake":
            self._require(None, "memory")
            raise RuntimeError(MEMORY_OF_REAL_RANKS)
        return self._this_rank("memory").memory

    def rank_memory(self) -> dict[int, Memory]:
        """Each running rank's memory, by rank (tensors="fake"; readable
        after the run and after the world goes down)."""
        return dict(self._memories)

    def measured_memory(self) -> Memory | None:
        return None  # one per rank: rank_memory()

    def _this_rank(self, what: str) -> Any:
        """The running rank's state."""
        self._require(None, what)
        if getattr(self._local, "rank", None) is None:
            raise RuntimeError(
                f"FakeWorld.{what} differs per rank in an exact world (values='exact') and is "
                "only available inside a rank's program (the test body, or a function given "
                "to FakeWorld.run), not in fixtures or outside run()"
            )
        return self._local

    def _mesh_here(self) -> DeviceMesh | None:
        return getattr(self._local, "mesh", None)

    def _own_thread_rank(self) -> int | None:
        """The running rank, on that rank's own thread; else None (outside
        the ranks, or a thread a rank started)."""
        local = self._local
        rank = getattr(local, "rank", None)
        return rank if rank is not None and getattr(local, "thread", None) == threading.get_ident() else None

    def _store_wait(self, store: Any, keys: list[str], call: str, timeout: Any) -> None:
        """A wait on the world's store for ``keys``, some not set: in a
        rank's program a turn (NOTE [Store waits are turns], store.py) that
        times out where no rank can set them (NOTE [A store wait times out],
        csrc/exact.cpp); elsewhere a wait for them, that signals can end."""
        import torch.distributed as dist

        rank = self._own_thread_rank()
        if rank is None:
            return poll(store, keys, timeout, call)
        site = self._site_of_caller()
        if self._native.wait_for_keys(self.running.index(rank), store.inner, keys, call, site):
            return None
        sites = self.call_sites()
        where = f" at {sites[site]}" if 0 <= site < len(sites) else ""
        missing = ", ".join(repr(key) for key in keys if not store.check([key]))
        others = "\n".join(line for other, line in self._rank_lines() if other != rank)
        raise dist.DistStoreError(
            f"{call}{where} in rank {rank} timed out: no rank set {missing}, and no other rank could run "
            f"(an exact world times such a wait out at once; a cluster, after the store's timeout)\n{others}"
        )

    def _site_of_caller(self) -> int:
        """The user's line calling into the package now, as an index into
        ``call_sites()`` (-1 if none is recorded)."""
        return self._site() if self._site is not None else -1

    def _fault_ranks(self) -> list[int]:
        """The running rank inside its program, else each rank (with its own
        call count, as in a real world where every process arms its own)."""
        rank = getattr(self._local, "rank", None)
        return list(self.running) if rank is None else [rank]

    def _calling_rank(self) -> int:
        rank = getattr(self._local, "rank", None)
        return -1 if rank is None else rank

    def group_labels(self) -> dict[str, str]:
        self._require(None, "group_labels")
        return self._labels_now()

    def _labels_now(self) -> dict[str, str]:
        """Inside a rank's program its groups' labels; and every label a rank
        had when its program ended, so records read after run() keep them."""
        return {**self._labels, **labels_now(self._mesh_here())}

    # -- life cycle ------------------------------------------------------------
    def _bring_up_groups(self) -> None:
        """No group in this thread; each rank makes its own in run()."""
        spec = self.spec
        self._store = world_store(self)  # NOTE [Store waits are turns]
        self._serve(_backend.load().WorldState("exact", spec.record, spec.world_size, list(spec.running or ())))
        self._native.set_mismatch_source(self._word_mismatch)  # cleared with the other sources at stop
        per_thread = _compat.c10d.install_thread_local_world()
        self._at_stop(lambda: _compat.c10d.uninstall_thread_local_world(per_thread))
        self.record_call_sites()  # a hang is reported with each rank's line

    def _patches(self) -> list[tuple[Any, dict[str, Any]]]:
        """An exact world runs torch's own object collectives: every rank has
        its objects. A thread started in a rank's program acts as that rank
        (NOTE [Threads a rank starts]); a rank's ``init_process_group`` finds
        the world's group (``_init_process_group``)."""
        import torch.distributed as dist
        import torch.distributed.distributed_c10d as c10d

        init = {"init_process_group": self._init_process_group(c10d.init_process_group)}
        sharing = SharedPlanning()  # NOTE [Sharing rank-free work]
        self._at_stop(sharing.clear)  # its decisions and plans hold this world's meshes
        patches = [*sharing.patches(), self._thread_start(), (dist, init), (c10d, init),
                   *_patches.batch_markers(_running_world), _compat.c10d.any_backend_served()]
        if self.spec.tensors == "fake":
            from ..fake.mode import exchanged_for_real, world_patches

            patches += [*world_patches(), *exchanged_for_real()]
        return patches

    def _enter_fake_tensors(self) -> None:
        """Each rank enters its own mode in its program (_rank_program)."""

    def _start_memory(self) -> None:
        """Each rank measures its own in its program (_rank_program)."""

    def _init_process_group(self, original: Callable[..., Any]) -> Callable[..., Any]:
        """``init_process_group`` while the world is up. Each rank's program
        starts with its default group made, as the world's own; a harness that
        sets up its group itself (torch's ``MultiProcessTestCase``,
        ``DTensorTestBase.init_pg``, a test's own call) is served by it: a
        call that agrees with the world (its size and this rank, or neither
        given) returns, and after the rank destroyed its default group makes
        it again, on this world's backend and store, whatever backend, store or
        init method the call names. Outside a rank's program, torch's own."""
        world = self

        @functools.wraps(original)
        def init_process_group(*args: Any, **kwargs: Any) -> None:
            import torch.distributed as dist

            rank = getattr(world._local, "rank", None)
            if rank is None:
                return original(*args, **kwargs)
            bound = inspect.signature(original).bind_partial(*args, **kwargs).arguments
            size, asked = bound.get("world_size", -1), bound.get("rank", -1)
            if size not in (-1, world.world_size) or asked not in (-1, rank):
                raise ValueError(
                    f"init_process_group(world_size={size}, rank={asked}) in rank {rank}'s program of an exact "
                    f"fake world of {world.world_size}: the world's group is this rank's; give world_size="
                    f"{world.world_size} and rank={rank}, or neither"
                )
            if dist.is_initialized():
                return None
            timeout = bound.get("timeout")
            return original(backend="fakepg", rank=rank, world_size=world.world_size, store=world._store,
                            **({"timeout": timeout} if timeout is not None else {}))

        return init_process_group

    def _stop_run(self, exc: BaseException) -> None:
        """End the run as if the running rank had raised ``exc``: the other
        ranks are stopped, while this rank's program goes on (to clean up, as
        a failing process does before it exits). How a unittest result that
        records a failure stops the world (``testcase.py``)."""
        if self._stop is not None:
            self._stop(self.rank, exc)

    def _thread_start(self) -> Any:
        """NOTE [Threads a rank starts]
        On a cluster every thread of a process sees its rank's groups: a data
        loader, a checkpoint writer, the thread pool in which transformers
        loads a tensor-parallel checkpoint. Here each rank's state is per
        thread, so while the world is up ``Thread.start`` hands a thread
        started in a rank's program that rank's state: its default group and
        every group it made (the same containers, so a group either makes is
        the rank's), its mesh registry and what FakeWorld says it is. Such a
        thread's collectives are the rank's: one waits in the rank's place,
        as the rank's own thread would (the rank's thread is then waiting for
        it, for a future's result or a join). Processes a rank starts are
        separate processes: they see no world, as on a cluster."""
        return _compat.stdlib.thread_start(self._rank_context, self._adopt, lambda: self._local.__dict__.clear())

    def _rank_context(self) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]] | None:
        """The running rank's state, in a rank's thread; else None."""
        if getattr(self._local, "rank", None) is None:
            return None
        return (dict(self._local.__dict__), _compat.c10d.thread_world_state(),
                _compat.device_mesh.mesh_thread_state())

    def _adopt(self, context: tuple[dict[str, Any], dict[str, Any], dict[str, Any]]) -> None:
        local, c10d, mesh = context
        self._local.__dict__.update(local)
        _compat.c10d.adopt_thread_world_state(c10d)
        _compat.device_mesh.adopt_mesh_thread_state(mesh)

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> list[Any]:
        """Run ``fn(*args, **kwargs)`` as the program of every rank, and
        return each rank's result, by rank. Each rank runs on its own thread
        (rank 0 on the caller's) with its own default group (and mesh, if
        asked for), its own RNG stream and its own DTensor RNG tracker; one
        rank runs at a time, switching where a rank waits for the others.
        The first rank to raise stops the world and its error is raised
        here; a program that would hang raises FakeWorldDeadlock."""
        from . import runner

        __tracebackhide__ = True
        self._require(None, "run")
        if getattr(self._local, "rank", None) is not None:
            raise RuntimeError("FakeWorld.run() was called inside a rank's program; call it from outside")
        outside = {name: os.environ.get(name) for name in PER_RANK}
        try:
            return runner.run(self, lambda rank: fn(*args, **kwargs), self._first_group())
        finally:
            if self.spec.env:  # each rank's variables were its own: back to the world's
                environment.put_back(outside)

    def _switch_to(self, rank: int) -> None:
        """Rank ``rank`` runs from now on: its torchrun variables (NOTE
        [torchrun's environment])."""
        if self.spec.env:
            os.environ.update(rank_env(rank, self._ranks_per_node))

    @contextlib.contextmanager
    def _rank_program(self, rank: int, first_group: int) -> Any:
        """In rank ``rank``'s thread: its default group, mesh and log for the
        length of its program."""
        import torch.distributed as dist

        local, spec = self._local, self.spec
        _compat.c10d.set_group_count(first_group)  # every rank names groups alike
        _default_group.init_default_group("fakepg", rank, spec.world_size, self._store, _new_backend)
        local.rank = rank
        local.thread = threading.get_ident()
        local.pg = _compat.c10d.default_group()
        local.log = CollectiveLog(self._native, rank=rank, labels=self._labels_now)
        local.mesh = local.flat_mesh = None
        tensors = contextlib.ExitStack()
        try:
            if spec.mesh_shape is not None:
                local.mesh = init_device_mesh(spec.device, spec.mesh_shape, spec.mesh_dim_names)
            if spec.tensors == "fake":
                local.memory = self._memories[rank] = tensors.enter_context(_fake_tensors(spec.device, self._assumed, self._shared))
            with tensors:
                yield
        finally:
            # Once a run is stopped, its ranks unwind together: one at a time
            # through torch's teardown, as they ran.
            with _TEARDOWN:
                try:
                    self._labels.update(labels_now(local.mesh))
                    if dist.is_initialized():
                        self._take_groups_count()
                        dist.destroy_process_group()
                finally:
                    # Per thread in torch: DeviceMesh's registries and the C++
                    # DTensor dispatch cache (whose keys compare meshes by
                    # shape, so a later world's mesh would find this one's groups).
                    _compat.device_mesh.clear_mesh_registries()
                    _compat.dtensor.clear_dtensor_state()
                    local.__dict__.clear()

    def _divergence(self, since: list[int]) -> str | None:
        """Where the collectives the ranks issued since record ``since[rank]``
        first disagree, as the check across ranks words it (labels, lines),
        or None."""
        from ..checks import consistency

        if not self.spec.record:
            return None
        n, log = self.world_size, self.collectives
        labels, sites = self.group_labels(), self.call_sites()
        traces = {}
        for slot, rank in enumerate(self.running):
            traces[rank] = records.trace(log, rank, n, labels, sites, since[slot], self.batches)
        return consistency.check(traces)

    def _word_mismatch(self, raw: tuple[Any, ...]) -> str:
        """A mismatch the backend found between the ranks' calls, worded as
        the check across ranks words it (NOTE [Mismatches are worded in
        Python], csrc/exact.hpp)."""
        from ..checks import consistency

        data = records.mismatch_data(raw, self._label_of(raw[1]), self.world_size)
        self._mismatched = (data["a"][0], data["b"][0])  # for _with_last_lines
        worded = consistency.word_mismatch(data)
        self._worded.add(worded)
        return worded

    def _reword(self, exc: BaseException, since: list[int]) -> None:
        """A mismatch the backend found (calls that met but disagree, raised
        on every member), already worded by the check across ranks (NOTE
        [Mismatches are worded in Python], csrc/exact.hpp): where records
        are on, the check's first divergence, with each call's line."""
        import torch.distributed as dist

        text = str(exc).removeprefix("fakepg: ")  # the backend's errors say whose they are
        # c10d may append the C++ stack it was raised from (TORCH_SHOW_CPP_STACKTRACES)
        worded = next((w for w in self._worded if text.startswith(w)), None)
        if not isinstance(exc, dist.DistBackendError) or worded is None:
            return
        exc.args = (self._divergence(since) or self._with_last_lines(worded, since),)

    def _with_last_lines(self, text: str, since: list[int]) -> str:
        """``text`` (a mismatch the check across ranks does not see: split
        sizes, a send and recv of other shapes on fake tensors) with the line
        of the last call of each of the two ranks the backend found
        disagreeing (``_word_mismatch``)."""
        if not self.spec.record or self._mismatched is None:
            return text
        labels, sites = self.group_labels(), self.call_sites()
        lines = []
        for rank in self._mismatched:
            _, calls = records.trace_data(self.collectives, rank, self.world_size, labels, sites,
                                          since[self.running.index(rank)], self.batches)
            if calls and calls[-1][7]:
                lines.append(f"rank {rank} at {calls[-1][7]}")
        return f"{text} ({'; '.join(lines)})" if lines else text

    def _deadlock_report(self, since: list[int]) -> str:
        """Each rank's pending call (op, group, line) and, where the
        collectives the ranks issued since record ``since[rank]`` disagree,
        the divergence, as the check across ranks words it."""
        lines = ["no rank can run: each waits for a call another rank never makes (on a cluster, a hang)"]
        lines += [line for _, line in self._rank_lines()]
        divergence = self._divergence(since)
        if divergence:
            lines.append(divergence)
        return "\n".join(lines)

    def _rank_lines(self) -> list[tuple[int, str]]:
        """What each rank that is not running does now: its pending call (op,
        group, line), or that it finished or never started."""
        native, module = self._native, _backend.load()
        labels = self.group_labels()
        sites = self.call_sites()
        lines = []
        for rank, state, waiting in zip(self.running, native.rank_states(), native.waiting()):
            if state == module.RANK_WAITING and waiting is not None:
                op, group, site = waiting
                where = f" at {sites[site]}" if 0 <= site < len(sites) else ""
                if not group:  # a store wait (NOTE [Store waits are turns])
                    lines.append((rank, f"  rank {rank} waits in {op}{where}, for a key not set"))
                    continue
                label = labels.get(group, "")
                named = label or f"'{group}'"
                lines.append((rank, f"  rank {rank} waits in {op} on group {named}{where}"))
            elif state == module.RANK_FINISHED:
                lines.append((rank, f"  rank {rank} finished its program"))
            elif state == module.RANK_NOT_STARTED:
                lines.append((rank, f"  rank {rank} never started"))
        return lines
