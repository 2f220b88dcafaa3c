"""Worlds on fake tensors (tensors="fake"): the ledger is record for record
the one real tensors give, faults fire, DeviceMesh/FSDP2/TP work, memory is
measured by category, and a value a fake tensor cannot have fails clearly."""

from __future__ import annotations


import functools
import gc
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
import torch.nn as nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import Replicate, Shard, distribute_tensor
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

from pytest_fakepg import ExactWorld, FakeWorld, FakeWorldWarning

from .conftest import RunTests

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

FakeTensor = torch._subclasses.fake_tensor.FakeTensor


def ledger_of(program: Callable[[FakeWorld], Any], tensors: str, size: int = 8, rank: int = 5, **kw: Any) -> list[tuple]:
    """Every record `program` makes, with each group named by its label and
    ranks (group names differ between two worlds of one process)."""
    with FakeWorld(size, rank=rank, tensors=tensors, **kw) as world:
        program(world)
        labels = world.group_labels()
        return [
            (r.op, labels.get(r.group_name), r.ranks, r.group_rank, r.shapes, r.dtype, r.bytes, r.reduce_op, r.peer, r.failed)
            for r in world.collectives
        ]


def same_ledger(program: Callable[[FakeWorld], Any], **kw: Any) -> list[tuple]:
    real = ledger_of(program, "real", **kw)
    fake = ledger_of(program, "fake", **kw)
    assert fake == real
    assert real, "the program issued no collective: the comparison tested nothing"
    return fake


# -- the ledger is the one real tensors give ------------------------------------


def c10d_program(world: FakeWorld) -> None:
    n, me = world.world_size, world.rank
    mesh = world.mesh
    tp = mesh["tp"].get_group() if mesh is not None else None
    t = torch.ones(6, 2)
    dist.all_reduce(t)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=tp)
    dist.broadcast(t, src=3)
    dist.reduce(t, dst=2, op=dist.ReduceOp.MIN)
    dist.all_gather([torch.empty(6, 2) for _ in range(n)], t)
    dist.all_gather_into_tensor(torch.empty(6 * n, 2), t)
    dist.reduce_scatter(torch.empty(6, 2), [torch.ones(6, 2) for _ in range(n)])
    dist.reduce_scatter_tensor(torch.empty(6, 2), torch.ones(6 * n, 2, dtype=torch.float32))
    dist.all_to_all([torch.empty(2) for _ in range(n)], [torch.ones(2) for _ in range(n)])
    dist.all_to_all_single(torch.empty(2 * n, 3), torch.ones(2 * n, 3))
    dist.gather(t, [torch.empty(6, 2) for _ in range(n)] if me == 0 else None, dst=0)
    dist.scatter(torch.empty(6, 2), [torch.ones(6, 2) for _ in range(n)] if me == 1 else None, src=1)
    dist.send(torch.ones(3, dtype=torch.int64), dst=(me + 1) % n)
    dist.recv(torch.empty(3, dtype=torch.int64), src=(me - 1) % n)
    dist.barrier()
    if hasattr(dist, "gather_single"):  # 2.14.1 and later
        dist.gather_single(torch.ones(6, 2), None, group_dst=0)
        dist.gather_single(torch.ones(6, 2), torch.empty(6 * n, 2), group_dst=me)
    work = dist.all_reduce(torch.ones(4, dtype=torch.bfloat16), async_op=True)
    work.wait()
    with dist._coalescing_manager(async_ops=True) as cm:
        dist.all_reduce(torch.ones(2))
        dist.all_reduce(torch.ones(5))
    cm.wait()
    ops = [dist.P2POp(dist.isend, torch.ones(4), (me + 1) % n), dist.P2POp(dist.irecv, torch.empty(4), (me - 1) % n)]
    for w in dist.batch_isend_irecv(ops):
        w.wait()


def test_c10d_collectives_record_as_with_real_tensors() -> None:
    fake = same_ledger(c10d_program, mesh={"dp": 2, "tp": 4})
    assert [r[0] for r in fake][:4] == ["all_reduce", "all_reduce", "broadcast", "reduce"]
    assert fake[1][1:3] == ("tp", (4, 5, 6, 7))


def done(t: torch.Tensor) -> torch.Tensor:
    """A functional collective's result, waited on. Under fake tensors torch
    waits at once (funcol takes FakeTensorMode for tracing) and returns a
    plain tensor, so there is no AsyncCollectiveTensor to wait on."""
    return t.wait() if isinstance(t, funcol.AsyncCollectiveTensor) else t


def funcol_program(world: FakeWorld) -> None:
    mesh = world.mesh
    t = torch.ones(4, 3)
    done(funcol.all_reduce(t, "sum", mesh["tp"]))
    funcol.all_reduce(t, "max", (mesh, 0))
    done(funcol.all_gather_tensor(t, 0, mesh["dp"]))
    done(funcol.reduce_scatter_tensor(torch.ones(8, 3), "avg", 0, mesh["tp"]))
    done(funcol.all_to_all_single(torch.ones(8, 3), [2, 2, 2, 2], [2, 2, 2, 2], mesh["tp"]))
    done(funcol.broadcast(t, 1, mesh["tp"]))
    funcol.all_reduce_coalesced([t, torch.ones(2)], "sum", mesh["tp"])
    funcol.all_gather_into_tensor_coalesced([t, torch.ones(2)], mesh["dp"])
    funcol.reduce_scatter_tensor_coalesced([torch.ones(8), torch.ones(4, 2)], "sum", [0, 0], mesh["tp"])


def test_functional_collectives_record_as_with_real_tensors() -> None:
    fake = same_ledger(funcol_program, mesh={"dp": 2, "tp": 4})
    assert [r[0] for r in fake] == [
        "all_reduce", "all_reduce", "all_gather_into_tensor", "reduce_scatter_tensor", "all_to_all_single",
        "broadcast", "all_reduce_coalesced", "all_gather_into_tensor_coalesced", "reduce_scatter_tensor_coalesced",
    ]


def dtensor_program(world: FakeWorld) -> None:
    mesh = world.mesh
    x = distribute_tensor(torch.ones(8, 12), mesh, [Shard(0), Shard(1)])
    y = x.redistribute(mesh, [Replicate(), Shard(0)])
    (y * 2).full_tensor()
    z = distribute_tensor(torch.ones(4, 4), mesh, [Replicate(), Replicate()])
    (z @ z.T).redistribute(mesh, [Shard(0), Replicate()]).to_local()


def test_dtensor_records_as_with_real_tensors() -> None:
    same_ledger(dtensor_program, mesh={"dp": 2, "tp": 4})


class Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(d, 4 * d, bias=False)
        self.w2 = nn.Linear(4 * d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(torch.relu(self.w1(x)))


def train_step(model: nn.Module, d: int, steps: int = 1) -> None:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(steps):
        model(torch.randn(4, d)).sum().backward()
        opt.step()
        opt.zero_grad()


def fsdp_program(world: FakeWorld) -> None:
    mesh = world.device_mesh()  # a CPU mesh: fully_shard's default is a cuda one where CUDA is available
    model = nn.Sequential(Block(16), Block(16))
    for block in model:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    train_step(model, 16, steps=2)


def tp_program(world: FakeWorld) -> None:
    model = Block(16)
    parallelize_module(model, world.device_mesh(), {"w1": ColwiseParallel(), "w2": RowwiseParallel()})
    train_step(model, 16)


def fsdp_tp_program(world: FakeWorld) -> None:
    mesh = init_device_mesh("cpu", (4, 2), mesh_dim_names=("dp", "tp"))
    model = nn.Sequential(Block(16), Block(16))
    for block in model:
        parallelize_module(block, mesh["tp"], {"w1": ColwiseParallel(), "w2": RowwiseParallel()})
        fully_shard(block, mesh=mesh["dp"])
    fully_shard(model, mesh=mesh["dp"])
    train_step(model, 16)


def reduce_ops_program(world: FakeWorld) -> None:
    """Every ReduceOp c10d and functional collectives take, PREMUL_SUM's
    scalar and tensor factors included."""
    t = torch.ones(4)
    ops = [*(getattr(dist.ReduceOp, n) for n in ("SUM", "AVG", "PRODUCT", "MIN", "MAX", "BAND", "BOR", "BXOR")),
           dist._make_nccl_premul_sum(0.5), dist._make_nccl_premul_sum(torch.tensor(0.25))]
    for op in ops:
        if op in (dist.ReduceOp.BAND, dist.ReduceOp.BOR, dist.ReduceOp.BXOR):
            dist.all_reduce(torch.ones(4, dtype=torch.int32), op=op)
            continue
        dist.all_reduce(t, op=op)
        dist.reduce_scatter_tensor(torch.empty(1), torch.ones(world.world_size), op=op)
    for name in ("sum", "avg", "min", "max", "product"):
        done(funcol.all_reduce(t, name, world.device_mesh()))


def fsdp_divided_program(world: FakeWorld) -> None:
    """FSDP2 with a gradient divide factor, as torchtitan sets it: its
    reduce-scatter is a PREMUL_SUM."""
    model = nn.Sequential(Block(16), Block(16))
    for block in [*model, model]:
        fully_shard(block, mesh=world.device_mesh())
        block.set_gradient_divide_factor(4.0)
    train_step(model, 16)


def test_every_reduce_op_records_as_with_real_tensors() -> None:
    fake = same_ledger(reduce_ops_program)
    assert [r[7] for r in fake if r[0] == "reduce_scatter_tensor"][-2:] == [dist.ReduceOp.PREMUL_SUM] * 2
    assert [r[7] for r in fake if r[0] == "all_reduce"][1] == dist.ReduceOp.AVG
    divided = same_ledger(fsdp_divided_program)
    assert {r[7] for r in divided if r[0] == "reduce_scatter_tensor"} == {dist.ReduceOp.PREMUL_SUM}


@pytest.mark.parametrize("program", [fsdp_program, tp_program, fsdp_tp_program], ids=["fsdp2", "tp", "fsdp2+tp"])
def test_training_steps_record_as_with_real_tensors(program: Callable[[FakeWorld], Any]) -> None:
    fake = same_ledger(program)
    if program is fsdp_tp_program:
        assert {r[1] for r in fake} >= {"dp", "tp"}


def test_ledger_is_plain_data_per_group_label_and_op() -> None:
    with FakeWorld(8, rank=5, mesh={"dp": 2, "tp": 4}, tensors="fake") as world:
        dist.all_reduce(torch.ones(4, 2), group=world.mesh["tp"].get_group())
        dist.all_reduce(torch.ones(3, dtype=torch.bfloat16), group=world.mesh["tp"].get_group())
        done(funcol.all_gather_tensor(torch.ones(5), 0, world.mesh["dp"]))
        dist.barrier()
        assert world.collectives.ledger() == {
            "tp": {"all_reduce": {"calls": 2, "bytes": 32 + 6, "dtypes": ["float32", "bfloat16"]}},
            "dp": {"all_gather_into_tensor": {"calls": 1, "bytes": 20, "dtypes": ["float32"]}},
            "default_pg": {"barrier": {"calls": 1, "bytes": 0, "dtypes": ["none"]}},
        }


def test_ledger_tells_groups_that_share_a_label_apart_by_their_ranks() -> None:
    with FakeWorld(4, rank=1) as world:
        a = dist.new_group([0, 1])
        b = dist.new_group([1, 2, 3])
        dist.all_reduce(torch.ones(1), group=a)
        dist.all_reduce(torch.ones(1), group=b)
        assert list(world.collectives.ledger()) == ["ranks 0, 1", "ranks 1-3"]


# -- at scale: FSDP2's closed form, byte-exact -------------------------------------


def test_fsdp2_sends_its_padded_shard_at_1024_ranks() -> None:
    """Forward all-gather input: sum over parameters of ceil(d0 / dp) x rest
    in the param dtype; backward reduce-scatter input: dp times that."""
    dp, d = 1024, 64
    shapes = [(4 * d, d), (d, 4 * d), (4 * d, d), (d, 4 * d), (3000, d)]
    with FakeWorld(dp, rank=777, tensors="fake") as world:
        model = nn.Sequential(Block(d), Block(d), nn.Linear(d, 3000, bias=False))
        fully_shard(model, mesh=world.device_mesh(), reshard_after_forward=False)
        world.collectives.clear()
        model(torch.randn(2, d)).sum().backward()
        shard = sum(math.ceil(s[0] / dp) * math.prod(s[1:]) for s in shapes) * 4
        gathers = [r for r in world.collectives if r.op == "all_gather_into_tensor"]
        scatters = [r for r in world.collectives if r.op == "reduce_scatter_tensor"]
        assert [(r.bytes, r.group_size) for r in gathers] == [(shard, dp)]
        assert [(r.bytes, r.dtype) for r in scatters] == [(dp * shard, torch.float32)]


# -- everything a training step touches works ---------------------------------------


def test_the_body_runs_on_fake_tensors_of_any_size() -> None:
    with FakeWorld(4, rank=1, tensors="fake") as world:
        huge = nn.Linear(200_000, 200_000, bias=False)  # 160 GB of float32
        assert isinstance(huge.weight, FakeTensor)
        dist.all_reduce(huge.weight)
        assert world.collectives[0].bytes == 200_000 * 200_000 * 4
        assert world.memory.current["parameters"] == 200_000 * 200_000 * 4
    assert not isinstance(torch.ones(1), FakeTensor)  # the mode is gone with the world


def test_initialisers_skip_fake_tensors_and_still_fill_real_ones() -> None:
    """trunc_normal_ resamples until no value is out of bounds (.item(),
    mask.any()): on a fake tensor it returns it untouched, as torchtitan's
    init_weights needs."""
    original = nn.init.trunc_normal_
    real = torch.full((3, 3), 100.0)
    with FakeWorld(2, tensors="fake"):
        weight = torch.empty(1000, 1000)
        assert nn.init.trunc_normal_(weight, std=0.02) is weight
        assert nn.init.orthogonal_(weight) is weight
        nn.init.trunc_normal_(real, std=0.02)  # made before the world: real, and filled
        assert real.abs().max().item() <= 2.0
    assert nn.init.trunc_normal_ is original


# Held by reference before any world, as torchtitan's model configs hold it.
TRUNC_NORMAL = functools.partial(nn.init.trunc_normal_, std=0.02)


def test_initialisers_held_by_reference_skip_fake_tensors_too() -> None:
    """NOTE [Initialisation on fake tensors]: the function itself changes
    while the world is up, so a reference taken before it (a partial made at
    import) skips fake tensors too; afterwards code, defaults and torch.nn.init's
    namespace are as they were."""
    function = nn.init.trunc_normal_
    code, defaults, names = function.__code__, function.__defaults__, set(vars(nn.init))
    real = torch.full((1000,), 100.0)
    with FakeWorld(2, tensors="fake"):
        weight = torch.empty(1000, 1000)
        assert TRUNC_NORMAL(weight) is weight  # resampling would read mask.any()
        TRUNC_NORMAL(real)  # made before the world: real, and filled with std=0.02
        assert real.abs().max().item() <= 2.0 and real.std().item() < 0.1
    assert (function.__code__, function.__defaults__, set(vars(nn.init))) == (code, defaults, names)
    assert nn.init.trunc_normal_(torch.full((1000,), 100.0)).std().item() > 0.5  # its own std=1 again


def test_device_mesh_is_real_inside_a_fake_tensor_world() -> None:
    with FakeWorld(16, rank=6, tensors="fake"):
        mesh = init_device_mesh("cpu", (2, 2, 4), mesh_dim_names=("pp", "dp", "tp"))
        assert mesh.mesh.tolist()[1][1] == [12, 13, 14, 15]
        assert not isinstance(mesh.mesh, FakeTensor)
        assert mesh["tp"].mesh.tolist() == [4, 5, 6, 7]
        assert mesh["pp", "tp"].mesh.tolist() == [[4, 5, 6, 7], [12, 13, 14, 15]]
        assert mesh["dp", "tp"]._flatten("dp_tp").mesh.tolist() == list(range(0, 8))
        assert list(mesh.get_coordinate()) == [0, 1, 2]


def test_fault_fires_on_fake_tensors_at_issue_and_at_wait() -> None:
    with FakeWorld(4, rank=0, tensors="fake", fail={"all_reduce": 2}) as world:
        dist.all_reduce(torch.ones(2))
        with pytest.raises(dist.DistBackendError, match="all_reduce"):
            dist.all_reduce(torch.ones(2))
        world.fail("all_gather_into_tensor", at="wait")
        work = dist.all_gather_into_tensor(torch.empty(8), torch.ones(2), async_op=True)
        with pytest.raises(dist.DistBackendError):
            work.wait()
        world.fail("reduce_scatter_tensor", at="wait")
        with pytest.raises(dist.DistBackendError):
            done(funcol.reduce_scatter_tensor(torch.ones(8), "sum", 0, world.device_mesh()))
        assert [r.failed for r in world.collectives] == [False, True, True, True]


def test_a_value_of_a_fake_tensor_fails_naming_the_world_and_the_line() -> None:
    with FakeWorld(2, tensors="fake"):
        x = torch.randn(3)
        with pytest.raises(Exception) as info:
            x.sum().item()
        notes = "\n".join(getattr(info.value, "__notes__", []))
        assert "tensors='fake'" in notes
        assert "test_fake_tensors.py:" in notes and "x.sum().item()" in notes
        assert "Will it fit?" in notes
        with pytest.raises(Exception) as info:
            torch.nonzero(x)
        assert "tensors='fake'" in "\n".join(info.value.__notes__)


# -- memory ----------------------------------------------------------------------


@pytest.mark.parametrize("tensors", ["real", "fake"])
def test_memory_by_category_through_a_training_step(tensors: str) -> None:
    d = 32
    param_bytes = 2 * 4 * d * d * 4
    with FakeWorld(2, tensors=tensors) as world:
        memory = world.memory
        model = Block(d)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        assert memory.current == {"parameters": param_bytes, "gradients": 0, "optimizer": 0, "activations": 0, "other": 0}
        model(torch.randn(8, d)).sum().backward()
        assert memory.current["gradients"] == param_bytes
        opt.step()
        # AdamW: exp_avg and exp_avg_sq per parameter, and a step counter each
        assert memory.current["optimizer"] == 2 * param_bytes + 2 * 4
        assert sum(memory.at_peak.values()) == memory.peak
        assert memory.at_peak["optimizer"] >= 2 * param_bytes
        assert memory.peak >= 4 * param_bytes
        memory.reset()
        assert memory.peak == sum(memory.current.values())


def test_memory_is_the_same_with_real_and_fake_tensors() -> None:
    figures = {}
    for tensors in ("real", "fake"):
        with FakeWorld(2, tensors=tensors) as world:
            model = nn.Sequential(Block(24), Block(24))
            world.memory.reset()
            train_step(model, 24)
            figures[tensors] = (world.memory.peak, world.memory.at_peak, world.memory.current)
    assert figures["fake"] == figures["real"]


# -- torch.compile -------------------------------------------------------------------


class Reducing(nn.Module):
    """A block whose output is all-reduced over the world inside forward: a
    functional collective that dynamo puts in the graph."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.block = Block(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return done(funcol.all_reduce(self.block(x), "sum", dist.group.WORLD))


def compiled_step(
    compile: Callable[[nn.Module], nn.Module] | None, tensors: str = "fake"
) -> tuple[list[tuple], dict[str, int]]:
    """One training step of Reducing: its ledger (op, shapes) and the memory
    live after it."""
    with FakeWorld(4, rank=2, tensors=tensors) as world:
        memory = world.memory  # measured from here in a real-tensor world too
        model = Reducing(16)
        step = model if compile is None else compile(model)
        step(torch.randn(8, 16)).sum().backward()
        gc.collect()  # what is live, not cycles the collector has yet to meet (their timing is the process's)
        return [(r.op, r.shapes) for r in world.collectives], memory.current


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit's, met on dynamo's imports
def test_a_compiled_module_runs_whole_graphs_on_fake_tensors() -> None:
    """NOTE [Compiled code under the tracker]: the memory tracker no longer
    makes dynamo skip every frame, so fullgraph=True compiles; the compiled
    graph's collective reaches the ledger and its gradients count as
    gradients."""
    graphs: list[Any] = []

    def counting(gm: Any, _inputs: Any) -> Any:
        graphs.append(gm)
        return gm.forward

    real = compiled_step(None, tensors="real")
    compiled = compiled_step(lambda m: torch.compile(m, fullgraph=True, backend=counting))
    assert len(graphs) == 1
    assert compiled == real
    assert real[0][0] == ("all_reduce", ((8, 16),))  # then its backward's, where torch has one
    assert real[1]["gradients"] == 2 * 16 * 64 * 4


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit's, met on inductor's imports
def test_inductor_compiles_for_fake_tensors_and_says_so_once() -> None:
    """NOTE [compat: torch.compile on fake tensors]: inductor's kernels
    cannot run on fake tensors, so its graphs run as ATen ops; one warning
    however many graphs, and the patch is gone with the world."""
    original = torch._TorchCompileInductorWrapper.__call__
    with pytest.warns(FakeWorldWarning) as record:
        with FakeWorld(2, tensors="fake") as world:
            model = torch.compile(Reducing(16), fullgraph=True)
            model(torch.randn(4, 16))
            model(torch.randn(8, 16))  # a second graph, dynamic in the batch
            shapes = [r.shapes for r in world.collectives]
    said = [str(w.message) for w in record if w.category is FakeWorldWarning]
    assert len(said) == 1
    assert "'aot_eager_decomp_partition'" in said[0] and "tensors='fake'" in said[0]
    assert record[0].filename == __file__
    assert shapes == [((4, 16),), ((8, 16),)]
    assert torch._TorchCompileInductorWrapper.__call__ is original


# -- arguments -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tensors": "meta"}, "tensors must be one of 'real', 'fake', got 'meta'"),
        ({"tensors": "fake", "backend": "fake"}, "tensors='fake' needs the fakepg backend"),
    ],
)
def test_bad_tensors_argument_is_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FakeWorld(4, **kwargs)


def test_exact_world_of_real_tensors_refuses_to_measure_memory() -> None:
    with ExactWorld(2) as world:
        with pytest.raises(RuntimeError, match="with real tensors"):
            world.memory


# -- in pytest: marker, fixtures, report, sweeps, snapshots ---------------------------------


def test_marker_runs_fixtures_and_body_on_fake_tensors(run_tests: RunTests) -> None:
    result = run_tests(
        """
import torch.nn as nn

@pytest.fixture
def model():
    return nn.Linear(1000, 1000)

@pytest.mark.fake_world(1024, rank=3, mesh={"dp": 128, "tp": 8}, tensors="fake")
def test_plan(model, fake_world, memory, collectives):
    from torch._subclasses.fake_tensor import FakeTensor
    assert isinstance(model.weight, FakeTensor)
    assert fake_world.tensors == "fake"
    dist.all_reduce(model.weight, group=fake_world.mesh["tp"].get_group())
    assert collectives.ledger() == {"tp": {"all_reduce": {"calls": 1, "bytes": 4_000_000, "dtypes": ["float32"]}}}
    assert memory.current["parameters"] == 4_004_000
""",
        "--fake-world-report",
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([
        "*test_plan* (world 1024, rank 3, fake tensors)",
        "    memory peak *",
        "    group tp (ranks 0-7) * 1 call * 3.8 MiB",
    ])


def test_a_fake_tensor_sweep_that_diverges_is_caught(run_tests: RunTests) -> None:
    result = run_tests(
        """
@pytest.mark.fake_world(4, rank="all", tensors="fake")
def test_step(rank):
    dist.all_reduce(torch.ones(8 if rank == 2 else 4))
"""
    )
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["*all_reduce*"])


LEDGER_TEST = """
@pytest.mark.fake_world(64, mesh={"dp": 8, "tp": 8}, tensors="fake")
def test_ledger(fake_world, collectives, FIXTURE):
    tp = fake_world.mesh["tp"].get_group()
    for _ in range(CALLS):
        dist.all_reduce(torch.ones(16), group=tp)
    ASSERT
"""


def snapshot_libraries(ledger: str) -> Any:
    """The two snapshot libraries, each checking ``ledger`` (an expression)."""
    return pytest.mark.parametrize(
        ("fixture", "check", "update"),
        [
            ("snapshot", f"assert {ledger} == snapshot", "--snapshot-update"),
            ("data_regression", f"data_regression.check({ledger})", "--force-regen"),
        ],
        ids=["syrupy", "pytest-regressions"],
    )


@snapshot_libraries("collectives.ledger()")
def test_ledger_snapshots_show_a_change_in_traffic(run_tests: RunTests, fixture: str, check: str, update: str) -> None:
    pytest.importorskip("syrupy" if fixture == "snapshot" else "pytest_regressions")
    source = LEDGER_TEST.replace("FIXTURE", fixture).replace("ASSERT", check)
    first = run_tests(source.replace("CALLS", "2"), update)
    first.assert_outcomes(passed=1) if fixture == "snapshot" else first.assert_outcomes(failed=1)  # regen fails once
    run_tests(source.replace("CALLS", "2")).assert_outcomes(passed=1)
    changed = run_tests(source.replace("CALLS", "3"))
    changed.assert_outcomes(failed=1)
    changed.stdout.fnmatch_lines(["*calls*3*"])


PLAN_TEST = """
@pytest.mark.fake_world(mesh={"dp": 64 // TP, "tp": TP}, tensors="fake", id="plan")
def test_plan(fake_world, collectives, FIXTURE):
    tp, dp = fake_world.mesh["tp"], fake_world.mesh["dp"]
    dist.all_reduce(torch.ones(1024 // tp.size()), group=tp.get_group())  # a tp-sharded activation
    dist.all_gather_into_tensor(torch.empty(dp.size() * 16), torch.ones(16), group=dp.get_group())
    ASSERT
"""


@snapshot_libraries("collectives.ledger(flat=True)")
def test_a_pinned_id_lets_a_snapshot_diff_a_change_of_plan(
    run_tests: RunTests, fixture: str, check: str, update: str
) -> None:
    """NOTE [Pinned case ids]: tp 8 -> tp 4 keeps the test's name, so the
    stored ledger is compared, and each changed number names its group."""
    pytest.importorskip("syrupy" if fixture == "snapshot" else "pytest_regressions")
    source = PLAN_TEST.replace("FIXTURE", fixture).replace("ASSERT", check)
    run_tests(source.replace("TP", "8"), update)
    run_tests(source.replace("TP", "8")).assert_outcomes(passed=1)
    changed = run_tests(source.replace("TP", "4"), "-vv")
    changed.assert_outcomes(failed=1)
    out = changed.stdout.str()
    assert "test_plan[plan]" in out
    assert "does not exist" not in out and "unused" not in out
    # tp's all-reduce doubles (1024 / 4 floats a rank, was 1024 / 8); dp's gather sends 64 bytes either way
    changed.stdout.fnmatch_lines(["*tp: all_reduce: bytes*512*", "*tp: all_reduce: bytes*1024*"])


def test_the_flat_ledger_names_group_op_and_field_on_each_line() -> None:
    with FakeWorld(8, mesh={"dp": 2, "tp": 4}, tensors="fake") as world:
        tp = world.mesh["tp"].get_group()
        dist.all_reduce(torch.ones(16), group=tp)
        dist.all_reduce(torch.ones(16, dtype=torch.bfloat16), group=tp)
        assert world.collectives.ledger(flat=True) == {
            "tp: all_reduce: calls": 2, "tp: all_reduce: bytes": 96, "tp: all_reduce: dtypes": "float32, bfloat16",
        }


def test_object_collectives_give_what_real_tensors_give() -> None:
    """Object collectives pickle into real tensors and read sizes back: in a
    fake-tensor world they run on real tensors, with the same results and
    ledger (Megatron gathers its config with all_gather_object)."""

    def program() -> tuple[Any, ...]:
        gathered: list[Any] = [None] * 4
        dist.all_gather_object(gathered, {"rank": dist.get_rank(), "hidden": 4096})
        broadcast = [dist.get_rank(), "x"]
        dist.broadcast_object_list(broadcast, src=1)
        at_root: list[Any] | None = [None] * 4 if dist.get_rank() == 0 else None
        dist.gather_object(("shard", dist.get_rank()), at_root, dst=0)
        scattered: list[Any] = [None]
        dist.scatter_object_list(scattered, [f"part {r}" for r in range(4)], src=1)
        return gathered, broadcast, at_root, scattered

    seen = {}
    for tensors in ("real", "fake"):
        with FakeWorld(4, rank=1, tensors=tensors) as world:
            seen[tensors] = (program(), [(r.op, r.bytes) for r in world.collectives])
    assert seen["fake"] == seen["real"]
    assert seen["fake"][0][0] == [{"rank": 1, "hidden": 4096}] * 4
