"""Nothing outlives a world: after it goes down, no cache, patch, registry
entry, thread state or autograd graph it made is reachable from the process,
whatever kind of world ran before it (NOTE [Patches], NOTE [Sharing
rank-free work], NOTE [A world's garbage goes with it])."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

from pytest_fakepg import ExactWorld, FakeWorld, WorldSpec
from pytest_fakepg._compat.state import traces
from pytest_fakepg.factory import world_for

from .conftest import planning_state

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

KINDS = {
    "real": {},
    "fake tensors": {"tensors": "fake"},
    "exact": {"values": "exact"},
}


def train(world: FakeWorld, steps: int = 2, held: list[Any] | None = None) -> list[weakref.ref[Any]]:
    """Steps of an FSDP2 + TP model; weak references to what it made (and
    the model and last loss in ``held``, if given)."""
    mesh = world.mesh
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16))
    parallelize_module(model, mesh["tp"], {"0": ColwiseParallel(), "2": RowwiseParallel()})
    fully_shard(model, mesh=mesh["dp"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for step in range(steps):
        loss = model(torch.randn(8, 16)).sum()
        loss.backward()
        optimizer.step()
        if step < steps - 1:
            optimizer.zero_grad()
    if held is not None:
        held += [model, loss]
    return [weakref.ref(x) for x in (model, loss, mesh, dist.group.WORLD, mesh["tp"].get_group())]


def run(kind: str, memory: bool = False, steps: int = 2, hold: bool = False) -> list[weakref.ref[Any]]:
    """A world of ``kind`` training; ``hold``: its model and loss live until
    the world is down, as a ``with FakeWorld`` block's locals do."""
    held: list[Any] | None = [] if hold else None
    with world_for(WorldSpec.build(mesh={"dp": 2, "tp": 2}, **KINDS[kind])) as world:
        if memory:
            assert world.memory.peak == 0
        made = world.run(lambda: train(world, steps, held)) if world.exact else [train(world, steps, held)]
    del held
    return [ref for refs in made for ref in refs]


@pytest.fixture(autouse=True)
def _no_earlier_garbage() -> None:
    """What tests before left to the collector is not this test's."""
    gc.collect()


def collected() -> list[Any]:
    """What a ``gc.collect()`` now frees."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        return list(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


GRAPHS = (nn.Module, torch.Tensor, torch.autograd.graph.Node)


def graphs(objects: list[Any], older: set[int]) -> list[str]:
    """The modules, tensors and autograd nodes among ``objects`` not in
    ``older`` (those alive before the world: another test's)."""
    return [type(o).__name__ for o in objects if isinstance(o, GRAPHS) and id(o) not in older]


def alive() -> set[int]:
    return {id(o) for o in gc.get_objects() if isinstance(o, GRAPHS)}


@pytest.mark.parametrize("order", [("real", "fake tensors", "exact"), ("exact", "fake tensors", "real")],
                         ids=lambda order: " then ".join(order))
def test_worlds_of_every_kind_in_a_row_leave_nothing(
    order: tuple[str, ...], pristine: dict[str, Any]
) -> None:
    for kind in order:
        older = alive()
        refs = run(kind)
        assert traces() == pristine, kind
        assert graphs(collected(), older) == [], kind
        assert [ref() for ref in refs if ref() is not None] == [], kind


def test_a_worlds_cycles_are_freed_as_it_goes_down() -> None:
    """FSDP2's modules and their hooks are cycles: without the world's own
    collection, the graphs would wait for a later test's collector run."""
    assert gc.isenabled()
    older = alive()
    refs = run("real")
    assert [ref() for ref in refs if ref() is not None] == []
    assert graphs(collected(), older) == []


@pytest.mark.parametrize("hold", [False, True], ids=["dropped in the world", "held past it"])
@pytest.mark.parametrize("kind", ["real", "fake tensors"])
def test_a_measured_worlds_graphs_die_with_it(kind: str, hold: bool) -> None:
    """The memory tracker's module hooks hang gradient hooks on every
    module's outputs, which held their autograd nodes from C++ (NOTE
    [ModTracker's gradient hooks]) when the graph outlived the tracker."""
    older = alive()
    refs = run(kind, memory=True, hold=hold)
    gc.collect()  # what the test held is its garbage now
    assert [ref() for ref in refs if ref() is not None] == []
    assert [type(o).__name__ for o in gc.get_objects() if isinstance(o, GRAPHS) and id(o) not in older] == []


def test_a_cycle_made_before_the_world_is_freed_after_it() -> None:
    class Cycle:
        def __init__(self) -> None:
            self.me = self

    made = weakref.ref(Cycle())
    with FakeWorld(2):
        gc.collect()
        assert made() is not None  # set aside while the world is up
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert made() is None


def test_where_the_program_froze_objects_the_world_collects_without_undoing_that() -> None:
    """Some environments freeze objects at start: the world then collects
    the whole process, and leaves the program's freeze as it was."""
    gc.freeze()
    try:
        older = alive()
        refs = run("real")
        assert gc.get_freeze_count() > 0  # what the program froze is still set aside
        assert [ref() for ref in refs if ref() is not None] == []
        assert graphs(collected(), older) == []
    finally:
        gc.unfreeze()


def test_exact_worlds_share_planning_only_while_up() -> None:
    """Each rank's DTensor work planned once for the world, and dropped with
    it: the decisions hold its meshes."""
    from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor

    from pytest_fakepg.exact.sharing import SharedPlanning

    propagator = DTensor._op_dispatcher.sharding_propagator
    before = planning_state(propagator)
    made: list[SharedPlanning] = []
    original = SharedPlanning.__init__

    def kept(self: SharedPlanning) -> None:
        original(self)
        made.append(self)

    def program(world: FakeWorld) -> weakref.ref[Any]:
        dt = distribute_tensor(torch.arange(16.0).view(4, 4), world.mesh, [Shard(0), Shard(1)])
        (dt * 2).redistribute(world.mesh, [Replicate(), Replicate()])
        return weakref.ref(world.mesh)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SharedPlanning, "__init__", kept)
        with ExactWorld(mesh={"dp": 2, "tp": 2}) as world:
            assert planning_state(propagator) != before
            meshes = world.run(lambda: program(world))
            (sharing,) = made
            assert sharing.decisions and sharing.plans
    assert (sharing.decisions, sharing.plans, sharing.paths) == ({}, {}, {})
    assert planning_state(propagator) == before
    assert [mesh() for mesh in meshes] == [None] * 4


def test_a_thread_that_outlives_worlds_keeps_no_sharding_decision() -> None:
    """NOTE [Meshes of different worlds]: DTensor's sharding caches are per
    thread. A thread that outlives worlds - autograd's CUDA device threads,
    which run every backward on a GPU - kept the first world's decisions,
    and the next world's equal mesh found them, with the first world's
    groups (torch 2.11 on CUDA: "Could not resolve the process group
    registered under the name 16"; tests/test_cuda.py runs that)."""
    import queue
    import threading

    jobs: queue.Queue[Any] = queue.Queue()
    results: queue.Queue[Any] = queue.Queue()

    def worker() -> None:  # one thread through every world, as autograd's device threads
        while (job := jobs.get()) is not None:
            try:
                results.put(job())
            except Exception as exc:  # noqa: BLE001 - handed to the test
                results.put(exc)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    try:
        for _ in range(2):
            with FakeWorld(2, mesh={"tp": 2}) as world:
                torch.manual_seed(0)
                mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4))
                parallelize_module(mlp, world.mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})
                jobs.put(lambda: mlp(torch.ones(2, 4)).shape)
                out = results.get(timeout=60)
                assert not isinstance(out, Exception), out
                assert out == (2, 4)
    finally:
        jobs.put(None)
        thread.join(timeout=60)


@pytest.mark.parametrize("kind", ["real", "fake tensors"])
def test_context_parallel_a_program_turned_on_is_off_after_its_world(kind: str) -> None:
    """torchtitan turns torch's CP dispatcher on and never off; the world
    turns it off, and takes its CPU ring attention out of torch's CP table
    (NOTE [Context parallel on CPU]). Inside, the table has it."""
    from torch.distributed.tensor.experimental import _attention  # noqa: F401 - loaded before or inside

    from pytest_fakepg._compat import context_parallel

    before = traces()
    with FakeWorld(2, **KINDS[kind]):
        _attention._enable_context_parallel_dispatcher()
        assert context_parallel.dispatcher_on()
        assert "aten._scaled_dot_product_flash_attention_for_cpu.default" in traces()["context parallel"][1]
    assert traces() == before
    assert before["context parallel"][0] is False


def test_a_patch_of_a_module_not_yet_imported_goes_in_at_its_import_and_out_with_the_world(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NOTE [Patches]: an owner named by module is patched as its import
    finishes, not before (no world pays a module's import), and the patch
    leaves with the others; a module never imported leaves no watch."""
    import sys

    from pytest_fakepg._compat import patching

    (tmp_path / "fakepg_later.py").write_text("TABLE = {'a': 1}\n")
    (tmp_path / "fakepg_never.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    hooks = list(sys.meta_path)
    saved = patching.install([("fakepg_later", lambda module: {"TABLE": {**module.TABLE, "b": 2}}),
                              ("fakepg_never", {"X": 2})])
    try:
        assert "fakepg_later" not in sys.modules
        import fakepg_later

        assert fakepg_later.TABLE == {"a": 1, "b": 2}
        assert fakepg_later.__loader__.__class__.__name__ == "SourceFileLoader"
    finally:
        patching.remove(saved)
        sys.modules.pop("fakepg_later", None)
    assert fakepg_later.TABLE == {"a": 1}
    assert sys.meta_path == hooks
    import fakepg_never

    assert fakepg_never.X == 1
    sys.modules.pop("fakepg_never", None)
