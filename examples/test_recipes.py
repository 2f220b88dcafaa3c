"""Recipes: what testing distributed code with pytest-fakepg looks like."""

import pytest
import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

from mlp import MLPModule

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


# -- rank sweep: rank-dependent logic, every rank of several world sizes ------

def save_checkpoint(path):
    """Code under test: only rank 0 writes."""
    if dist.get_rank() == 0:
        path.write_text("weights")
    dist.barrier()


@pytest.mark.fake_world([2, 4], rank="all")  # 2 + 4 = 6 cases
def test_only_rank0_saves(rank, world_size, tmp_path, collectives):
    ckpt = tmp_path / "ckpt"
    save_checkpoint(ckpt)
    assert ckpt.exists() == (rank == 0)
    assert collectives.ops == ["barrier"]


# -- mesh sweep: the same tensor-parallel plan on several meshes --------------

@pytest.mark.fake_world(mesh=[{"dp": 1, "tp": 2}, {"dp": 2, "tp": 4}])
def test_tp_plan_communicates_within_tp(device_mesh, collectives):
    model = parallelize_module(MLPModule(), device_mesh["tp"],
                               {"net1": ColwiseParallel(), "net2": RowwiseParallel()})
    collectives.clear()  # count the step only, not the parameter sharding
    model(torch.randn(4, 10, requires_grad=True)).sum().backward()
    tp = device_mesh["tp"]
    assert collectives.ops == ["all_reduce", "all_reduce"]  # forward + input gradient
    assert all(r.group_size == tp.size() for r in collectives)
    assert collectives.total_bytes() == 2 * 4 * 10 * 4  # two (4, 10) float32 tensors


# -- DTensor: exact values, because every rank holds what this one holds -----

@pytest.mark.fake_world(mesh={"dp": 2, "tp": 2}, rank=[0, 3])
def test_dtensor_redistribute(device_mesh, rank):
    full = torch.arange(16.0).view(4, 4)
    # src_data_rank=None: each rank takes its chunk of `full` without a
    # scatter, so every rank's shard is exact (see README: Values).
    dt = distribute_tensor(full, device_mesh, [Shard(0), Replicate()], src_data_rank=None)
    row = device_mesh.get_coordinate()[0]
    assert torch.equal(dt.to_local(), full[2 * row : 2 * row + 2])
    replicated = dt.redistribute(device_mesh, [Replicate(), Replicate()])
    assert isinstance(replicated, DTensor)
    assert torch.equal(replicated.to_local(), dt.to_local().repeat(2, 1))


# -- faults: the third all_gather fails, the code under test retries ----------

def gather_with_retry(out, inp, attempts=3):
    """Code under test: retry a collective that failed in the backend."""
    for attempt in range(1, attempts + 1):
        try:
            dist.all_gather_into_tensor(out, inp)
            return attempt
        except dist.DistBackendError:
            if attempt == attempts:
                raise


@pytest.mark.fake_world(8, fail={"all_gather_into_tensor": 3})
def test_retry_on_comm_failure(fake_world, collectives):
    out = torch.empty(8)
    assert gather_with_retry(out, torch.ones(1)) == 1
    assert gather_with_retry(out, torch.ones(1)) == 1
    assert gather_with_retry(out, torch.ones(1)) == 2  # call 3 failed, call 4 succeeded
    assert [r.failed for r in collectives] == [False, False, True, False]
    with fake_world.fail("all_gather_into_tensor"):  # a persistent failure
        with pytest.raises(dist.DistBackendError):
            gather_with_retry(out, torch.ones(1))
    assert fake_world.calls("all_gather_into_tensor") == 7


@pytest.mark.fake_world(4, fail="all_reduce", fail_at="wait")
def test_async_failure_surfaces_at_wait():
    work = dist.all_reduce(torch.ones(2), async_op=True)  # issuing succeeds
    with pytest.raises(dist.DistBackendError, match="injected fault in all_reduce"):
        work.wait()


# -- collective counts: pin down a communication pattern ----------------------

@pytest.mark.fake_world(4)
def test_gradient_sync_is_one_bucket(collectives):
    grads = [torch.ones(10), torch.ones(3)]
    flat = torch.cat(grads)
    dist.all_reduce(flat, op=dist.ReduceOp.AVG)
    assert collectives.count() == 1
    assert collectives[0].reduce_op == dist.ReduceOp.AVG
    assert collectives[0].bytes == 13 * 4
    assert torch.equal(flat, torch.ones(13))  # AVG of equal values
