"""FakeWorld's life cycle: what it sets up, what it leaves behind (nothing),
how it validates its arguments, and torch's stock backend."""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor

from pytest_fakepg import ExactWorld, FakeWorld, WorldSpec
from pytest_fakepg._compat import c10d as compat_c10d
from pytest_fakepg._compat.state import traces
from pytest_fakepg.factory import world_for

from .conftest import planning_state

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def test_world_exposes_its_parts() -> None:
    with FakeWorld(8, rank=3, mesh={"dp": 2, "tp": 4}) as world:
        assert (world.rank, world.world_size, world.device, world.values) == (3, 8, "cpu", "uniform")
        assert dist.get_rank() == 3 and dist.get_world_size() == 8
        assert dist.get_backend() == "fakepg"
        assert world.pg is dist.distributed_c10d._get_default_group()
        assert isinstance(world.store, dist.Store)
        world.store.set("k", "v")
        assert world.store.get("k") == b"v"
        assert isinstance(world.mesh, DeviceMesh)
        assert world.mesh.mesh_dim_names == ("dp", "tp")
        assert world.mesh.mesh.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
        assert tuple(world.mesh.get_coordinate()) == (0, 3)
        assert world.device_mesh() is world.mesh


def test_mesh_with_inferred_size_and_unnamed() -> None:
    with FakeWorld(12, mesh=(2, -1, 3)) as world:
        assert tuple(world.mesh.shape) == (2, 2, 3)
        assert world.mesh.mesh_dim_names is None
    with FakeWorld(mesh=(("pp", 2), ("dp", 3))) as world:
        assert world.world_size == 6
        assert world.mesh.mesh_dim_names == ("pp", "dp")


def test_device_mesh_defaults_to_flat_mesh_over_all_ranks() -> None:
    with FakeWorld(4, rank=2) as world:
        assert world.mesh is None
        mesh = world.device_mesh()
        assert mesh.mesh.tolist() == [0, 1, 2, 3] and mesh.get_local_rank() == 2
        assert world.device_mesh() is mesh


def test_negative_rank_counts_from_the_end() -> None:
    with FakeWorld(4, rank=-1) as world:
        assert world.rank == 3 == dist.get_rank()


def test_teardown_leaves_nothing(pristine: dict[str, Any]) -> None:
    os.environ["TORCH_DISTRIBUTED_DEBUG"] = "DETAIL"
    try:
        before = traces()
        with FakeWorld(4, mesh={"dp": 2, "tp": 2}) as world:
            assert "TORCH_DISTRIBUTED_DEBUG" not in os.environ
            os.environ["FAKEPG_TEST_VAR"] = "1"
            dt = distribute_tensor(torch.arange(8.0).view(4, 2), world.mesh, [Shard(0), Replicate()])
            (dt + 1).redistribute(world.mesh, [Replicate(), Replicate()])
            with pytest.warns(UserWarning, match="DTensor"):
                torch.distributed.tensor._random.manual_seed(0, world.mesh)
            dist.new_group([0, 1])
            init_device_mesh("cpu", (4,))
            assert traces()["groups"]["pg_map"] > 3
            assert traces()["DTensor sharding caches"] != before["DTensor sharding caches"]
        assert traces() == before
    finally:
        del os.environ["TORCH_DISTRIBUTED_DEBUG"]


def test_teardown_runs_when_the_body_raises(pristine: dict[str, Any]) -> None:
    with pytest.raises(KeyError):
        with FakeWorld(4, mesh={"dp": 2, "tp": 2}):
            raise KeyError("boom")
    assert traces() == pristine


def test_body_that_destroys_the_group_itself(pristine: dict[str, Any]) -> None:
    with FakeWorld(2):
        dist.destroy_process_group()
    assert traces() == pristine


def test_refuses_to_start_over_an_existing_default_group(pristine: dict[str, Any]) -> None:
    import torch.testing._internal.distributed.fake_pg  # noqa: F401  registers "fake"

    dist.init_process_group("fake", rank=0, world_size=3, store=dist.HashStore())
    try:
        with pytest.raises(RuntimeError, match=r"default process group exists \(backend 'fake', world size 3\)"):
            FakeWorld(2).start()
        assert dist.get_world_size() == 3  # untouched
    finally:
        dist.destroy_process_group()


def test_failed_start_leaves_nothing(pristine: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.distributed.device_mesh as dm

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("mesh failed")

    monkeypatch.setattr(dm, "init_device_mesh", broken)
    with pytest.raises(RuntimeError, match="mesh failed"):
        FakeWorld(4, mesh=(2, 2)).start()
    assert traces() == pristine


def test_group_names_are_never_reused() -> None:
    with FakeWorld(4, mesh={"dp": 2, "tp": 2}) as world:
        old_mesh = world.mesh
        old_names = {world.pg.group_name, old_mesh["tp"].get_group().group_name}
    with FakeWorld(4, mesh={"dp": 2, "tp": 2}) as world:
        new_names = {world.pg.group_name, world.mesh["tp"].get_group().group_name}
        assert not old_names & new_names
        with pytest.raises((RuntimeError, ValueError)):
            old_mesh["tp"].get_group()


def test_group_names_are_not_reused_after_a_body_destroys_its_world() -> None:
    with FakeWorld(4, mesh={"dp": 2, "tp": 2}) as world:
        old_names = {world.pg.group_name, world.mesh["tp"].get_group().group_name}
        dist.destroy_process_group()  # torch's name counter restarts at 0
    with FakeWorld(4, mesh={"dp": 2, "tp": 2}) as world:
        assert not old_names & {world.pg.group_name, world.mesh["tp"].get_group().group_name}


def test_dtensor_distribute_scatters_from_rank_0() -> None:
    with FakeWorld(mesh={"dp": 2, "tp": 2}, rank=0) as world:
        full = torch.arange(16.0).view(4, 4)
        dt = distribute_tensor(full, world.mesh, [Shard(0), Shard(1)])
        assert dt.to_local().tolist() == [[0.0, 1.0], [4.0, 5.0]]
        assert world.collectives.ops == ["scatter", "scatter"]


def test_dtensor_redistribute_on_2d_mesh_gives_exact_values() -> None:
    with FakeWorld(mesh={"dp": 2, "tp": 2}, rank=3) as world:
        full = torch.arange(16.0).view(4, 4)
        # Off mesh rank 0, the default src_data_rank=0 scatters data this rank
        # cannot know; src_data_rank=None takes the local chunk (README recipe).
        dt = distribute_tensor(full, world.mesh, [Shard(0), Shard(1)], src_data_rank=None)
        # rank 3 is at (1, 1): rows 2..3, columns 2..3
        assert dt.to_local().tolist() == [[10.0, 11.0], [14.0, 15.0]]
        replicated = dt.redistribute(world.mesh, [Replicate(), Replicate()]).to_local()
        # every rank holds what rank 3 holds: its block tiled 2 x 2
        assert torch.equal(replicated, dt.to_local().repeat(2, 2))
        assert world.collectives.count("all_gather_into_tensor") == 2
        partial_sum = (dt.redistribute(world.mesh, [Replicate(), Replicate()]) * 1).sum()
        assert partial_sum.full_tensor().item() == replicated.sum().item()


def test_dtensor_plans_as_torch_does_outside_exact_worlds(monkeypatch: pytest.MonkeyPatch) -> None:
    # Sharing rank-free planning is a property of exact worlds (NOTE
    # [Sharing rank-free work]): a uniform world leaves DTensor's planning
    # as it is, and each world decides afresh, as torch does.
    from torch.distributed.tensor._sharding_prop import ShardingPropagator

    decided: list[str] = []
    decide = ShardingPropagator.propagate_op_sharding_non_cached

    def counted(self: Any, op_schema: Any) -> Any:
        decided.append(str(op_schema.op))
        return decide(self, op_schema)

    monkeypatch.setattr(ShardingPropagator, "propagate_op_sharding_non_cached", counted)
    propagator = DTensor._op_dispatcher.sharding_propagator
    before = planning_state(propagator)

    def step() -> list[str]:
        decided.clear()
        with FakeWorld(mesh={"dp": 2, "tp": 2}, rank=3) as world:
            assert planning_state(propagator) == before
            dt = distribute_tensor(torch.arange(16.0).view(4, 4), world.mesh, [Shard(0), Shard(1)], src_data_rank=None)
            (dt * 2).redistribute(world.mesh, [Replicate(), Replicate()])
        return list(decided)

    first = step()
    assert "aten.mul.Tensor" in first
    assert step() == first
    assert planning_state(propagator) == before


def test_a_later_world_at_another_rank_gets_its_own_redistribution_shapes() -> None:
    # 7 rows over a 2 x 2 mesh, dimension 0 sharded on both mesh dimensions:
    # ranks 0 and 1 hold 4 rows between them, ranks 2 and 3 hold 3. torch
    # caches redistribute planners per process and computes these shapes from
    # the rank that made them (NOTE [compat: redistribute caches]).
    full = torch.arange(14.0).view(7, 2)
    for rank, rows in ((3, 3), (0, 4), (2, 3)):
        with FakeWorld(4, rank=rank, mesh=(2, 2)) as world:
            dt = distribute_tensor(full, world.mesh, [Shard(0), Shard(0)], src_data_rank=None)
            assert dt.redistribute(world.mesh, [Shard(0), Replicate()]).to_local().shape == (rows, 2)


def test_records_can_be_switched_off_and_cleared() -> None:
    with FakeWorld(2, record=False) as world:
        dist.barrier()
        assert len(world.collectives) == 0 and not world.collectives.recording
        world.collectives.recording = True
        dist.barrier()
        dist.all_reduce(torch.ones(2))
        assert world.collectives.ops == ["barrier", "all_reduce"]
        assert world.collectives.count() == 2 and world.collectives.total_bytes() == 8
        assert world.collectives.total_bytes("barrier") == 0
        assert world.calls() == 3  # counting for faults goes on while not recording
        world.collectives.clear()
        assert len(world.collectives) == 0
        with pytest.raises(ValueError, match="did you mean 'barrier'"):
            world.collectives.count("barier")


def test_log_slices_and_negative_indices() -> None:
    with FakeWorld(2) as world:
        for _ in range(3):
            dist.barrier()
        dist.all_reduce(torch.ones(1))
        log = world.collectives
        assert log[-1].op == "all_reduce"
        assert [r.op for r in log[1:3]] == ["barrier", "barrier"]
        with pytest.raises(IndexError):
            log[4]
        assert log.summary() == {"barrier": {"count": 3, "bytes": 0}, "all_reduce": {"count": 1, "bytes": 4}}


def test_stock_backend_runs_the_same_world() -> None:
    with FakeWorld(4, rank=1, backend="fake", mesh={"dp": 2, "tp": 2}) as world:
        assert dist.get_backend() == "fake" and world.values == "copy"
        t = torch.ones(2)
        dist.all_reduce(t)
        assert t.tolist() == [1.0, 1.0]  # copy semantics
        with pytest.raises(RuntimeError, match="records no collectives.*stock backend"):
            world.collectives.count()
    with FakeWorld(2, backend="fake", fail=True):
        with pytest.raises(RuntimeError, match="FakeProcessGroup collective operation error"):
            dist.all_reduce(torch.ones(1))


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"values": "uniform"}, ValueError, "values='uniform' needs the fakepg backend"),
        ({"record": True}, ValueError, "record=True needs the fakepg backend"),
        ({"fail": "all_reduce"}, ValueError, r"fail='all_reduce' needs the fakepg backend"),
        ({"fail": {"barrier": 2}}, ValueError, r"fail=\{'barrier': 2\} needs the fakepg"),
        ({"fail": True, "fail_at": "wait"}, ValueError, "fail='\\*' with fail_at='wait' needs"),
    ],
)
def test_stock_backend_refuses_what_it_cannot_do(kwargs: dict[str, Any], error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        FakeWorld(2, backend="fake", **kwargs)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "message"),
    [
        ((0,), {}, ValueError, "world_size must be an int >= 1, got 0"),
        (("4",), {}, TypeError, r"world_size must be an int >= 1, got '4' \(str\)"),
        ((True,), {}, TypeError, "world_size must be an int >= 1, got True"),
        ((), {}, ValueError, "world_size is required unless a mesh is given"),
        ((4,), {"rank": 4}, ValueError, r"rank must be in \[0, 3\] .* got 4"),
        ((4,), {"rank": -5}, ValueError, r"rank must be in \[0, 3\] .* got -5"),
        ((4,), {"rank": 1.0}, TypeError, "rank must be an int"),
        ((4,), {"mesh": (3, 2)}, ValueError, r"mesh \(3, 2\) has 6 ranks but world_size is 4"),
        ((4,), {"mesh": (3, -1)}, ValueError, "4 is not divisible by 3"),
        ((4,), {"mesh": (-1, -1)}, ValueError, "at most one -1"),
        ((4,), {"mesh": {"dp": 0, "tp": 4}}, ValueError, "mesh sizes must be ints >= 1"),
        ((4,), {"mesh": [2, 2]}, TypeError, "mesh must be a dict of dimension name to size"),
        ((), {"mesh": {"dp": -1}}, ValueError, "has a -1 size, which is inferred from world_size"),
        ((4,), {"mesh": (("dp", 2), ("dp", 2))}, ValueError, "'dp' appears more than once"),
        ((4,), {"mesh": {"2d": 4}}, ValueError, "names must be identifiers"),
        ((4,), {"device": "gpu"}, ValueError, "device must be one of 'cpu', 'cuda' .* got 'gpu'"),
        ((4,), {"device": "xpu"}, ValueError, "device must be one of 'cpu', 'cuda' .* got 'xpu'"),
        ((4,), {"values": "random"}, ValueError, "values must be one of 'uniform', 'copy', 'exact', got 'random'"),
        ((4,), {"fail": "all_reduse"}, ValueError, "did you mean 'all_reduce'"),
        ((4,), {"ranks": "all"}, TypeError, "unexpected keyword argument 'ranks' .did you mean 'rank'.."),
        ((4,), {"fail": {"barrier": 0}}, ValueError, "call number for 'barrier' must be an int >= 1"),
        ((4,), {"fail": 3}, TypeError, "fail must be None, True"),
        ((4,), {"fail_at": "never"}, ValueError, "fail_at must be one of 'issue', 'wait'"),
        ((4,), {"backend": "gloo"}, ValueError, "backend must be one of 'fakepg', 'fake', got 'gloo'"),
        ((4,), {"record": "yes"}, TypeError, "record must be True or False"),
    ],
)
def test_invalid_arguments_are_refused_up_front(
    pristine: dict[str, Any], args: tuple[Any, ...], kwargs: dict[str, Any], error: type, message: str
) -> None:
    with pytest.raises(error, match=message):
        FakeWorld(*args, **kwargs)
    assert traces() == pristine


def test_spec_ids() -> None:
    assert WorldSpec.build(8, mesh={"dp": 2, "tp": 4}).mesh_id == "dp2xtp4"
    assert WorldSpec.build(6, mesh=(3, -1)).mesh_id == "3x2"
    assert WorldSpec.build(6).mesh_id is None


def test_cuda_world_without_a_gpu_says_so() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(RuntimeError, match="device='cuda' was asked for but no cuda device is available"):
        FakeWorld(2, device="cuda").start()
    assert not dist.is_initialized()


def test_fakepg_backend_outside_a_world_is_refused() -> None:
    with FakeWorld(2):  # registers the backend
        pass
    with pytest.raises(RuntimeError, match="makes groups only inside a fake world"):
        dist.init_process_group("fakepg", rank=0, world_size=2, store=dist.HashStore())
    if dist.is_initialized():  # pragma: no cover - torch version dependent
        dist.destroy_process_group()


def mesh_view(mesh: DeviceMesh) -> dict[str, Any]:
    """What a user can observe through a mesh."""
    dims = range(mesh.ndim)
    return {
        "mesh": mesh.mesh.tolist(),
        "names": mesh.mesh_dim_names,
        "coordinate": tuple(mesh.get_coordinate()),
        "local_ranks": [mesh.get_local_rank(d) for d in dims],
        "group_ranks": [dist.get_process_group_ranks(mesh.get_group(d)) for d in dims],
        "group_sizes": [mesh.size(d) for d in dims],
    }


@pytest.mark.parametrize("shape", [(2, 3), (2, 2, 2), (3, 1, 2), (6,)])
def test_mesh_with_only_this_ranks_groups_matches_torchs(shape: tuple[int, ...]) -> None:
    """NOTE [Only this rank's groups]: what a user sees is torch's mesh."""
    names = tuple(f"d{i}" for i in range(len(shape)))
    size = 1
    for s in shape:
        size *= s
    for rank in range(size):
        with FakeWorld(size, rank=rank) as world:
            stock = init_device_mesh("cpu", shape, mesh_dim_names=names)
            stock_view = mesh_view(stock)
            stock_sub = mesh_view(stock[names[-2:]]) if len(names) > 1 else None
        with FakeWorld(size, rank=rank, mesh=dict(zip(names, shape))) as world:
            assert mesh_view(world.mesh) == stock_view
            if stock_sub is not None:
                assert mesh_view(world.mesh[names[-2:]]) == stock_sub


def test_million_rank_mesh_creates_only_this_ranks_groups() -> None:
    with FakeWorld(mesh={"pp": 16, "dp": 8192, "tp": 8}, rank=123_457) as world:
        mesh = world.mesh
        assert traces()["groups"]["pg_map"] == 4  # default + one per dimension
        assert tuple(mesh.get_coordinate()) == (1, 7240, 1)  # 123457 = 1*65536 + 7240*8 + 1
        assert dist.get_process_group_ranks(mesh.get_group("tp")) == list(range(123_456, 123_464))
        assert dist.get_process_group_ranks(mesh.get_group("pp")) == [1 + 7240 * 8 + k * 65536 for k in range(16)]
        t = torch.ones(2)
        dist.all_reduce(t, group=mesh.get_group("dp"))
        assert t.tolist() == [8192.0, 8192.0]


def test_the_public_signatures_agree() -> None:
    """One definition of a world's arguments: FakeWorld, WorldSpec.build and
    the marker (which adds check_ranks and id) take the same, with the same defaults."""
    import inspect

    from pytest_fakepg.plugin import collection

    build = list(inspect.signature(WorldSpec.build).parameters.values())
    assert list(inspect.signature(FakeWorld).parameters.values()) == build
    marker = list(collection.MARKER_SIGNATURE.parameters.values())
    assert marker[:-2] == build and [p.name for p in marker[-2:]] == ["check_ranks", "id"]
    assert [p.name for p in build] == [
        "world_size", "rank", "mesh", "device", "values", "fail", "fail_at", "backend", "record", "tensors",
        "local_world_size", "env", "exact_dims", "per_rank_modules",
    ]
    assert FakeWorld(WorldSpec.build(4, rank=1)).spec == FakeWorld(4, rank=1).spec


@pytest.fixture
def unchecked_default_groups(monkeypatch: pytest.MonkeyPatch) -> Any:
    """As in a new process: the direct default group not checked yet (NOTE
    [The default group made directly])."""
    from pytest_fakepg import _default_group

    monkeypatch.setattr(_default_group, "_DIRECT_GROUPS", None)
    monkeypatch.setattr(_default_group, "_TORCHS_DEFAULT_GROUP", {})
    return _default_group


def default_group_view() -> dict[str, Any]:
    """What a user (and DeviceMesh, DTensor, functional collectives) can see
    of the default group."""
    c10d = dist.distributed_c10d
    pg = dist.group.WORLD
    t = torch.full((2,), float(dist.get_rank()))
    dist.all_reduce(t)
    sub = dist.new_group([3, 2, 1, 0])
    return {
        "rank": (dist.get_rank(), pg.rank(), dist.get_world_size()),
        "backend": (dist.get_backend(), dist.get_backend_config(), pg._get_backend_name()),
        "name": (pg.group_name, pg.group_desc, c10d._resolve_process_group(pg.group_name) is pg),
        "ranks": dist.get_process_group_ranks(pg),
        "store": type(c10d._get_default_store()).__name__,
        "all_reduce": t.tolist(),
        "sub_group": (dist.get_process_group_ranks(sub), dist.get_rank(sub)),
        "tags": sorted(tag.partition(":")[0] for tag in c10d._world.tags_to_pg),  # "", "ptd" (per group)
        "mesh": init_device_mesh("cpu", (2, 2)).get_coordinate(),
    }


def test_default_group_made_directly_is_torchs(unchecked_default_groups: Any) -> None:
    """The first default group of a world size is torch's, the next is made
    directly and checked against it; users see the same group either way."""
    groups = unchecked_default_groups
    with FakeWorld(4, rank=2) as world:
        torchs_state = compat_c10d.default_group_state()
        torchs = default_group_view()
        assert groups._DIRECT_GROUPS is None
    with FakeWorld(4, rank=2) as world:
        assert groups._DIRECT_GROUPS is True
        assert compat_c10d.default_group_state() == torchs_state
        direct = default_group_view()
        assert [r.op for r in world.collectives] == ["all_reduce"]
    torchs["name"], direct["name"] = torchs["name"][1:], direct["name"][1:]  # another world, another group name
    assert direct == torchs
    assert direct["all_reduce"] == [8.0, 8.0]  # 4 ranks' copies of rank 2's values (uniform)

    def program() -> Any:
        state = compat_c10d.default_group_state()
        t = torch.tensor([float(dist.get_rank())])
        dist.all_reduce(t)
        return dist.get_rank(), t.item(), state == torchs_state

    with ExactWorld(4) as world:  # every rank's group made directly
        assert world.run(program) == [(r, 6.0, True) for r in range(4)]


@pytest.mark.parametrize("fault", ["differs", "raises", "raises half made"])
def test_default_group_made_by_torch_when_the_direct_one_is_not_torchs(
    unchecked_default_groups: Any, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    """A torch whose init_process_group leaves something the direct way does
    not (or lacks a name it uses): undone, made by torch, and by torch from
    then on."""
    groups = unchecked_default_groups
    made = groups.make_default_group
    calls = []

    def unlike_torchs(*args: Any) -> None:
        calls.append(args)
        if fault == "raises":
            raise AttributeError("module 'torch.distributed.distributed_c10d' has no attribute '_a_name'")
        made(*args)
        if fault == "raises half made":  # registered, not yet the default group
            dist.distributed_c10d._update_default_pg(None)
            raise AttributeError("module 'torch.distributed.distributed_c10d' has no attribute '_a_name'")
        del dist.distributed_c10d._world.tags_to_pg[""]

    monkeypatch.setattr(groups, "make_default_group", unlike_torchs)
    with FakeWorld(2):
        torchs_state = compat_c10d.default_group_state()
    for rank in (1, 0):
        with FakeWorld(2, rank=rank) as world:
            assert groups._DIRECT_GROUPS is False
            assert compat_c10d.default_group_state() == torchs_state
            assert dist.get_rank() == rank
            t = torch.ones(3)
            dist.all_reduce(t)
            assert t.tolist() == [2.0, 2.0, 2.0]
            assert len(world.collectives) == 1
    assert len(calls) == 1  # tried once, never again


# -- torch's internals, through the compat door ------------------------------------


def test_a_mesh_group_factory_of_unknown_parameters_leaves_the_mesh_to_torch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """NOTE [compat: mesh groups]: a newer torch whose per-dimension group
    factory takes parameters the plugin does not know builds the mesh by
    torch's own path, and the user sees the same mesh."""
    original = vars(DeviceMesh)["_init_one_process_group"].__func__
    calls = []

    def newer(*args: Any, a_new_parameter: Any = None) -> Any:
        calls.append(args)
        return original(*args)

    with FakeWorld(8, rank=5) as world:
        stock = mesh_view(init_device_mesh("cpu", (2, 4), mesh_dim_names=("dp", "tp")))
    monkeypatch.setattr(DeviceMesh, "_init_one_process_group", staticmethod(newer))
    with FakeWorld(8, rank=5, mesh={"dp": 2, "tp": 4}) as world:
        assert mesh_view(world.mesh) == stock
    assert len(calls) == 2  # torch's path, one call per dimension


def test_a_rank_threads_c10d_state_holds_what_world_init_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    """NOTE [compat: per-rank c10d state]: state a newer torch's _World sets
    in __init__ (2.15 added _pg_flight_recorder_hooks) exists on every rank's
    thread, each its own."""
    import threading

    c10d = dist.distributed_c10d

    class NewerWorld(c10d._World):  # type: ignore[name-defined]
        def __init__(self) -> None:
            super().__init__()
            self._new_state: dict[str, int] = {}

        @property
        def new_state(self) -> dict[str, int]:
            return self._new_state

    monkeypatch.setattr(c10d, "_World", NewerWorld)
    compat_c10d._per_thread_world_class.cache_clear()
    try:
        world = compat_c10d._per_thread_world_class()()
        world.new_state["main"] = 1
        seen = []
        thread = threading.Thread(target=lambda: seen.append(dict(world.new_state)))
        thread.start()
        thread.join()
        assert seen == [{}] and world.new_state == {"main": 1}
    finally:
        compat_c10d._per_thread_world_class.cache_clear()


def test_a_missing_torch_internal_names_the_torch_version(
    pristine: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A torch that moved an internal the plugin needs gives an error naming
    the torch version and the versions tested, and leaves nothing behind."""
    from pytest_fakepg import UnsupportedTorchError

    with FakeWorld(2):  # fakepg registered (torch's register_backend writes _plugins itself)
        pass
    with monkeypatch.context() as patched:  # not undo(): conftest's own patches stay
        patched.delattr(dist.Backend, "_plugins")
        with pytest.raises(UnsupportedTorchError) as info:
            FakeWorld(2).start()
    message = str(info.value)
    assert f"cannot route c10d's backend plugins to the fake world on torch {torch.__version__} " in message
    assert "AttributeError" in message and "tested with torch 2.11, 2.13.0, 2.14.1 and 2.15.0" in message
    assert traces() == pristine


@pytest.mark.parametrize("backend", ["gloo", "nccl", "cpu:gloo,cuda:nccl"])
@pytest.mark.parametrize("values", ["uniform", "exact"])
def test_a_group_of_any_backend_is_the_worlds_own(backend: str, values: str) -> None:
    """Megatron makes a gloo group beside each NCCL one: a real gloo group in
    a fake world waited 30 minutes for ranks that do not exist (NOTE [Any
    backend name is the world's]). The timeout makes a real one fail fast."""
    import datetime

    soon = datetime.timedelta(seconds=2)
    with world_for(WorldSpec.build(4, values=values, fail={"all_reduce": 2})) as world:

        def program() -> tuple[str, float, bool]:
            rank = dist.get_rank()
            pairs = [dist.new_group([0, 1], soon, backend, group_desc="pair"),
                     dist.new_group([2, 3], timeout=soon, backend=backend, group_desc="pair")]
            t = torch.tensor([float(rank)])
            dist.all_reduce(t, group=pairs[rank // 2])
            with pytest.raises(dist.DistBackendError, match="all_reduce"):  # faults fire on it too
                dist.all_reduce(t)
            return dist.get_backend(pairs[rank // 2]), t.item(), world.collectives[0].group == "pair"

        results = world.run(program) if world.exact else [program()]
    # exact: 0 + 1 and 2 + 3; uniform: rank 0's 0.0 from both members
    assert results == ([("fakepg", 1.0, True)] * 2 + [("fakepg", 5.0, True)] * 2 if values == "exact"
                       else [("fakepg", 0.0, True)])
