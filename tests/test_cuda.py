"""Fake worlds on a real accelerator: CUDA tensors in every collective, the
same uniform values and recorded bytes as on the CPU, no host synchronisation,
and DeviceMesh on cuda. Skipped where there is no CUDA device."""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch
import torch.distributed as dist

from pytest_fakepg import FakeWorld

from .conftest import arange

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; none is available"),
    pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning"),
]

N = 4  # group size: the "tp" dimension of {"dp": 2, "tp": 4}


def x(*shape: int, device: str) -> torch.Tensor:
    return arange(*shape, device=device)


# op -> (run on (pg, device) returning the tensors whose values matter)
OPS: dict[str, Callable[[Any, str], list[torch.Tensor]]] = {}


def op(fn: Callable[[Any, str], list[torch.Tensor]]) -> Callable[[Any, str], list[torch.Tensor]]:
    OPS[fn.__name__] = fn
    return fn


@op
def all_reduce(pg: Any, d: str) -> list[torch.Tensor]:
    outs = []
    for red in (dist.ReduceOp.SUM, dist.ReduceOp.AVG, dist.ReduceOp.PRODUCT, dist.ReduceOp.MAX):
        t = x(2, 3, device=d)
        dist.all_reduce(t, op=red, group=pg)
        outs.append(t)
    i = torch.arange(3, 6, 2, device=d)  # [3, 5]; torch.tensor(..., device=) would sync
    dist.all_reduce(i, op=dist.ReduceOp.BXOR, group=pg)
    return outs + [i]


@op
def all_reduce_coalesced(pg: Any, d: str) -> list[torch.Tensor]:
    a, b = x(2, device=d), x(3, device=d)
    with dist._coalescing_manager(group=pg):
        dist.all_reduce(a, group=pg)
        dist.all_reduce(b, group=pg)
    return [a, b]


@op
def all_gather(pg: Any, d: str) -> list[torch.Tensor]:
    out = [torch.zeros(2, 2, device=d) for _ in range(N)]
    dist.all_gather(out, x(2, 2, device=d), group=pg)
    return out


@op
def all_gather_into_tensor(pg: Any, d: str) -> list[torch.Tensor]:
    out = torch.zeros(2 * N, 3, device=d)
    dist.all_gather_into_tensor(out, x(2, 3, device=d), group=pg)
    return [out]


@op
def all_gather_coalesced(pg: Any, d: str) -> list[torch.Tensor]:
    outs = [[torch.zeros(2, device=d), torch.zeros(3, device=d)] for _ in range(N)]
    dist.all_gather_coalesced(outs, [x(2, device=d), x(3, device=d)], group=pg)
    return [t for o in outs for t in o]


@op
def all_gather_into_tensor_coalesced(pg: Any, d: str) -> list[torch.Tensor]:
    oa, ob = torch.zeros(2 * N, device=d), torch.zeros(3 * N, device=d)
    with dist._coalescing_manager(group=pg):
        dist.all_gather_into_tensor(oa, x(2, device=d), group=pg)
        dist.all_gather_into_tensor(ob, x(3, device=d), group=pg)
    return [oa, ob]


@op
def reduce_scatter(pg: Any, d: str) -> list[torch.Tensor]:
    out = torch.zeros(2, device=d)
    dist.reduce_scatter(out, [x(2, device=d) * (j + 1) for j in range(N)], group=pg)
    return [out]


@op
def reduce_scatter_tensor(pg: Any, d: str) -> list[torch.Tensor]:
    out = torch.zeros(2, device=d)
    dist.reduce_scatter_tensor(out, x(2 * N, device=d), group=pg)
    return [out]


@op
def reduce_scatter_tensor_coalesced(pg: Any, d: str) -> list[torch.Tensor]:
    oa, ob = torch.zeros(1, device=d), torch.zeros(3, device=d)
    with dist._coalescing_manager(group=pg):
        dist.reduce_scatter_tensor(oa, x(N, device=d), group=pg)
        dist.reduce_scatter_tensor(ob, x(3 * N, device=d), group=pg)
    return [oa, ob]


@op
def all_to_all(pg: Any, d: str) -> list[torch.Tensor]:
    outs = [torch.zeros(2, device=d) for _ in range(N)]
    dist.all_to_all(outs, [x(2, device=d) * j for j in range(N)], group=pg)
    return outs


@op
def all_to_all_single(pg: Any, d: str) -> list[torch.Tensor]:
    out = torch.zeros(2 * N, device=d)
    dist.all_to_all_single(out, x(2 * N, device=d), group=pg)
    return [out]


@op
def broadcast(pg: Any, d: str) -> list[torch.Tensor]:
    t = x(3, device=d)
    dist.broadcast(t, group_src=0, group=pg)
    return [t]


@op
def reduce(pg: Any, d: str) -> list[torch.Tensor]:
    t = x(3, device=d)
    dist.reduce(t, group_dst=1, group=pg)  # this rank (group rank 1) is the root
    return [t]


@op
def gather(pg: Any, d: str) -> list[torch.Tensor]:
    out = [torch.zeros(2, device=d) for _ in range(N)]
    dist.gather(x(2, device=d), out, group_dst=1, group=pg)
    return out


@op
def gather_into_tensor(pg: Any, d: str) -> list[torch.Tensor]:
    if not hasattr(dist, "gather_single"):
        pytest.skip("this torch has no dist.gather_single (2.14.1 and 2.15 have it)")
    out = torch.zeros(2 * N, device=d)
    dist.gather_single(x(2, device=d), out, group_dst=1, group=pg)
    return [out]


@op
def scatter(pg: Any, d: str) -> list[torch.Tensor]:
    out = torch.zeros(2, device=d)
    dist.scatter(out, [x(2, device=d) * j for j in range(N)], group_src=1, group=pg)
    return [out]


@op
def send(pg: Any, d: str) -> list[torch.Tensor]:
    t = x(2, device=d)
    dist.send(t, group_dst=0, group=pg)
    return [t]


@op
def recv(pg: Any, d: str) -> list[torch.Tensor]:
    t = torch.full((2,), 7.0, device=d)
    dist.recv(t, group_src=0, group=pg)
    return [t]


@op
def barrier(pg: Any, d: str) -> list[torch.Tensor]:
    dist.barrier(group=pg)
    return []


def record_fields(world: FakeWorld) -> list[tuple[Any, ...]]:
    return [(r.op, r.group_size, r.group_rank, tuple(r.ranks), r.shapes, r.dtype, r.bytes, r.reduce_op, r.peer)
            for r in world.collectives]


def run_op(name: str, device: str, values: str) -> tuple[list[torch.Tensor], list[tuple[Any, ...]]]:
    # rank 1 of {"dp": 2, "tp": 4}: its tp group is ranks 0..3, group rank 1
    with FakeWorld(8, rank=1, mesh={"dp": 2, "tp": 4}, device=device, values=values) as world:
        pg = world.mesh["tp"].get_group()
        if device == "cuda":
            torch.cuda.set_sync_debug_mode("error")  # any host sync in a collective raises
        try:
            outs = OPS[name](pg, device)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return [t.cpu() for t in outs], record_fields(world)


@pytest.mark.parametrize("values", ["uniform", "copy"])
@pytest.mark.parametrize("name", sorted(OPS))
def test_cuda_gives_the_cpu_values_and_records(name: str, values: str) -> None:
    cpu_outs, cpu_records = run_op(name, "cpu", values)
    cuda_outs, cuda_records = run_op(name, "cuda", values)
    assert len(cuda_outs) == len(cpu_outs)
    for got, want in zip(cuda_outs, cpu_outs):
        assert torch.equal(got, want)
    assert cuda_records == cpu_records
    assert cuda_records  # every op leaves a record


def test_every_collective_is_covered() -> None:
    from pytest_fakepg.ops import OP_NAMES

    assert set(OPS) == set(OP_NAMES)


@pytest.mark.parametrize("at", ["issue", "wait"])
def test_faults_on_cuda(at: str) -> None:
    with FakeWorld(4, device="cuda", fail={"all_reduce": 2}, fail_at=at):
        t = torch.ones(2, device="cuda")
        dist.all_reduce(t)
        assert t.tolist() == [4.0, 4.0]
        with pytest.raises(dist.DistBackendError, match="call 2 of all_reduce"):
            dist.all_reduce(t, async_op=True).wait()
        dist.all_reduce(t)
        assert t.tolist() == [16.0, 16.0]


def test_async_work_future_holds_cuda_outputs() -> None:
    with FakeWorld(2, device="cuda"):
        t = torch.ones(3, device="cuda")
        work = dist.all_reduce(t, async_op=True)
        assert work.is_completed()
        (out,) = work.get_future().wait()
        assert out.device.type == "cuda" and out.tolist() == [2.0] * 3


@pytest.mark.fake_world(mesh={"dp": 2, "tp": 4}, device="cuda", rank="all")
def test_every_rank_of_8_on_one_gpu(device_mesh, rank, collectives):
    assert device_mesh.device_type == "cuda"
    assert dist.get_rank() == rank
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    full = torch.arange(32.0, device="cuda").view(8, 4)
    dt = distribute_tensor(full, device_mesh, [Shard(0), Shard(1)], src_data_rank=None)
    dp, tp = device_mesh.get_coordinate()
    assert torch.equal(dt.to_local(), full[4 * dp : 4 * dp + 4, tp : tp + 1])
    rep = dt.redistribute(device_mesh, [Replicate(), Replicate()]).to_local()
    assert rep.shape == (8, 4) and rep.device.type == "cuda"
    assert collectives.count("all_gather_into_tensor") == 2


# -- tensors="fake": the memory estimate against the allocator -------------------------


@pytest.mark.parametrize("world_size", [64, 1024])
@pytest.mark.parametrize("tp", [1, 8], ids=["fsdp2", "fsdp2+tp"])
def test_fake_tensor_memory_estimate_is_within_10_percent_of_cuda(world_size: int, tp: int) -> None:
    """The same rank's peak: estimated on fake tensors, measured by the CUDA
    caching allocator with real tensors (benchmarks/memory_accuracy.py, each
    in a fresh process)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "memory_accuracy.py"
    spec = importlib.util.spec_from_file_location("memory_accuracy", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    estimate, measured = module.measure(world_size, tp)
    error = (estimate - measured) / measured
    figures = (f"{'FSDP2 + TP' if tp > 1 else 'FSDP2'} world {world_size}: estimate {estimate / 2**30:.3f} GiB, "
               f"max_memory_allocated {measured / 2**30:.3f} GiB, error {error:+.1%}")
    print(figures)
    assert abs(error) <= 0.10, figures


def test_local_rank_names_a_gpu_of_this_machine() -> None:
    import os

    with FakeWorld(64, rank=63, device="cuda", mesh={"dp": 8, "tp": 8}):
        local = int(os.environ["LOCAL_RANK"])
        assert 0 <= local < torch.cuda.device_count()
        assert int(os.environ["RANK"]) == 63


def test_real_nccl_ranks(run_tests: Any) -> None:
    """--fake-world-real=nccl: a CUDA world of one rank a GPU runs on real
    NCCL with the fake world's ledger; one that needs more GPUs than the
    machine has is skipped on real ranks with the reason."""
    gpus = torch.cuda.device_count()
    result = run_tests(f"""
@pytest.mark.fake_world({gpus}, device="cuda", fail={{"broadcast": 1}})
def test_fits(rank, collectives):
    t = torch.ones(4, device="cuda")
    dist.all_reduce(t)
    assert t.tolist() == [float({gpus})] * 4
    with pytest.raises(dist.DistBackendError, match="injected fault in broadcast"):
        dist.broadcast(t, 0)
    dist.broadcast(t, 0)
    assert [(c.op, c.failed) for c in collectives] == [("all_reduce", False), ("broadcast", True), ("broadcast", False)]


@pytest.mark.fake_world({gpus + 1}, device="cuda")
def test_too_big():
    dist.all_reduce(torch.ones(4, device="cuda"))


@pytest.mark.fake_world(2)
def test_on_cpu():
    dist.all_reduce(torch.ones(4))
""", "--fake-world-real=nccl", "--fake-world-real-timeout=120")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines([
        f"test_it.py::test_fits?w{gpus}-r0?: fake passed, real passed on {gpus} ranks in * s, ledgers agree",
        "test_it.py::test_on_cpu?w2-r0?: fake passed, real skipped (a device='cpu' world runs real on gloo "
        "(--fake-world-real=gloo), not nccl)",
        f"test_it.py::test_too_big?w{gpus + 1}-r0?: fake passed, real skipped (NCCL takes one GPU a rank: "
        f"{gpus + 1} ranks on this machine, and it has {gpus} GPU(s))",
    ])


def test_a_real_cuda_tp_world_then_a_fake_tensor_one() -> None:
    """The next world's TP layers found a finished CUDA world's sharding
    decisions in the autograd engine's device thread, and with them its
    groups (torch 2.11: "Could not resolve the process group registered
    under the name 16"): NOTE [Meshes of different worlds]."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    try:
        from memory_accuracy import plan_step
    finally:
        sys.path.pop(0)
    with FakeWorld(64, rank=63, device="cuda"):
        plan_step(64, 8)
    with FakeWorld(64, rank=63, device="cuda", tensors="fake") as world:
        plan_step(64, 8)
        by_group = {record.group for record in world.collectives if record.op == "all_reduce"}
    assert by_group == {"tp"}
