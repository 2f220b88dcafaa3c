"""PyTorch's upstream test/distributed/test_fake_pg.py, with exact values.

With ``values="exact"`` every rank runs the test body with its own data, and
each collective computes what a real world computes from every rank's inputs.
So the upstream tests check the values a cluster would produce, rank by rank,
and the end-to-end ones become parity tests: the sharded model must train
exactly like the single-device one.
"""

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import Shard
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

from mlp import MLPModule

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


@pytest.mark.fake_world(2, values="exact")
def test_all_reduce(rank):
    output = torch.ones(3, 3) * (rank + 1)
    dist.all_reduce(output)
    assert torch.equal(output, torch.full((3, 3), 3.0))  # 1 + 2


@pytest.mark.fake_world(2, values="exact")
def test_allgather(rank):
    input_tensor = torch.ones(3, 3) * rank
    output_tensors = [torch.empty_like(input_tensor) for _ in range(2)]
    dist.all_gather(output_tensors, input_tensor)
    assert [t[0, 0].item() for t in output_tensors] == [0.0, 1.0]


@pytest.mark.fake_world(2, values="exact")
def test_reduce_scatter(rank):
    output = torch.empty(3, 3)
    # rank r contributes r + 10 * j for chunk j
    dist.reduce_scatter(output, [torch.full((3, 3), rank + 10.0 * j) for j in range(2)])
    assert torch.equal(output, torch.full((3, 3), 1 + 20.0 * rank))  # (0 + 1) + 2 * 10 * rank


@pytest.mark.fake_world(2, values="exact")
def test_broadcast(rank):
    for src in (0, 1):
        output = torch.full((3, 3), float(rank))
        dist.broadcast(output, src=src)
        assert torch.equal(output, torch.full((3, 3), float(src)))


@pytest.mark.fake_world(2, values="exact")
def test_scatter(rank):
    output = torch.ones(3, 3)
    dist.scatter(output, [torch.ones(3, 3) * r for r in range(2)] if rank == 0 else None, src=0)
    assert torch.equal(output, torch.full((3, 3), float(rank)))


@pytest.mark.fake_world(2, values="exact")
def test_alltoall(rank):
    output_list = [torch.zeros(3, 3) for _ in range(2)]
    dist.all_to_all(output_list, [torch.full((3, 3), 10.0 * rank + j) for j in range(2)])
    assert [o[0, 0].item() for o in output_list] == [rank, 10.0 + rank]


@pytest.mark.fake_world(2, values="exact")
def test_alltoall_base(rank):
    out_tensor = torch.zeros(2, 3)
    in_tensor = torch.arange(6.0).view(2, 3) + 100 * rank
    dist.all_to_all_single(out_tensor, in_tensor, [1, 1], [1, 1])
    # row j of the output is row `rank` of rank j's input
    assert out_tensor.tolist() == [[3.0 * rank + c + 100 * j for c in range(3)] for j in range(2)]


@pytest.mark.fake_world(2, values="exact")
def test_send_recv(rank):
    if rank == 0:
        dist.send(torch.arange(9.0).view(3, 3), 1)
    else:
        output = torch.ones(3, 3)
        dist.recv(output, 0)
        assert torch.equal(output, torch.arange(9.0).view(3, 3))


@pytest.mark.fake_world(2, values="exact", fail=True)
def test_error_on_collective():
    tensor = torch.ones(3, 3)
    with pytest.raises(dist.DistBackendError, match="injected fault in all_reduce"):
        dist.all_reduce(tensor)
    with pytest.raises(dist.DistBackendError, match="injected fault in barrier"):
        dist.barrier()


def _train(model, batch, steps, scale=1.0):
    optim = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(steps):
        (model(batch).sum() * scale).backward()
        optim.step()
        optim.zero_grad()
    return model


@pytest.mark.fake_world(2, values="exact")
def test_fsdp_fake_e2e(rank, collectives):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))
    reference = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))
    reference.load_state_dict(model.state_dict())
    batch = torch.randn(4, 2, generator=torch.Generator().manual_seed(1))
    fully_shard(model, mesh=init_device_mesh("cpu", (2,)))
    # Each rank trains on its half of the batch. FSDP averages gradients over
    # the ranks, so each rank's loss counts twice to match the whole batch's.
    _train(model, batch[2 * rank : 2 * rank + 2], steps=3, scale=2.0)
    _train(reference, batch, steps=3)
    for name, p in reference.named_parameters():
        torch.testing.assert_close(model.get_parameter(name).full_tensor(), p.detach())
    assert collectives.count("all_gather_into_tensor") >= 3
    assert collectives.count("reduce_scatter_tensor") == 3


@pytest.mark.fake_world(mesh={"dp": 2, "tp": 2}, values="exact")
def test_fsdp_tp_fake_e2e(device_mesh, rank):
    batch = torch.randn(8, 10, generator=torch.Generator().manual_seed(2))
    reference = _train(MLPModule(), batch, steps=5)
    plan = {"net1": ColwiseParallel(input_layouts=Shard(0)), "net2": RowwiseParallel(output_layouts=Shard(0))}
    model = parallelize_module(MLPModule(), device_mesh["tp"], plan)
    fully_shard(model, mesh=device_mesh["dp"])
    # Each dp replica trains on its half of the batch, each tp rank holding a
    # quarter (input_layouts=Shard(0)); FSDP averages over the 2 replicas.
    dp, tp = device_mesh["dp"].get_local_rank(), device_mesh["tp"].get_local_rank()
    _train(model, batch[4 * dp + 2 * tp : 4 * dp + 2 * tp + 2], steps=5, scale=2.0)
    for name, p in reference.named_parameters():
        torch.testing.assert_close(model.get_parameter(name).full_tensor(), p.detach())
