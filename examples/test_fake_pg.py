"""PyTorch's upstream test/distributed/test_fake_pg.py, in plugin style.

No init_process_group, no destroy_process_group, no FakeStore: the marker
brings the world up and takes it down. Where upstream could only check shapes
(its fake backend leaves values alone), these check the values a real world
computes when every rank holds the same data (`uniform` semantics).
"""

import pytest
import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
import torch.nn as nn
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
from torch.distributed.tensor import Shard
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module
from torch.fx.experimental.proxy_tensor import make_fx
from torch.testing import FileCheck
from torch.utils._python_dispatch import TorchDispatchMode

from mlp import MLPModule

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


@pytest.mark.fake_world(2, rank=1)
def test_all_reduce():
    output = torch.ones(3, 3) * dist.get_rank()
    dist.all_reduce(output)
    assert torch.equal(output, torch.full((3, 3), 2.0))  # 1 + 1


@pytest.mark.fake_world(2, rank=1)
def test_allgather():
    input_tensor = torch.ones(3, 3) * dist.get_rank()
    output_tensors = [torch.empty_like(input_tensor) for _ in range(2)]
    dist.all_gather(output_tensors, input_tensor)
    assert all(torch.equal(t, input_tensor) for t in output_tensors)


@pytest.mark.fake_world(2, rank=1)
def test_reduce_scatter():
    output = torch.empty(3, 3)
    dist.reduce_scatter(output, [torch.ones(3, 3) * r for r in range(2)])
    assert torch.equal(output, torch.full((3, 3), 2.0))  # my chunk (1s), summed over 2 ranks


@pytest.mark.fake_world(2, device="cuda")
def test_construct_fsdp():
    model = FSDP(nn.Linear(2, 3, device="cuda"))
    assert model.world_size == 2


@pytest.mark.fake_world(2, device="cuda")
def test_fsdp_fake_e2e(collectives):
    model = nn.Sequential(nn.Linear(2, 3, device="cuda"), nn.ReLU(), nn.Linear(3, 2, device="cuda"))
    sharded = FSDP(model, use_orig_params=True)
    optim = torch.optim.Adam(sharded.parameters(), lr=0.0001)
    sharded(torch.randn(2, 2, device="cuda")).sum().backward()
    optim.step()
    assert collectives.count("all_gather_into_tensor") >= 1
    assert collectives.count("reduce_scatter_tensor") >= 1


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a cuda device"))])
def test_fake_pg_tracing(fake_world, device):
    def allgather_fn(tensor):
        return funcol.all_gather_tensor(tensor, 0, fake_world.pg)

    gm = make_fx(allgather_fn)(torch.randn(2, 2, device=device))
    FileCheck().check("all_gather").check("wait_tensor").run(str(gm.graph))


@pytest.mark.fake_world(2, rank=0)
def test_broadcast():
    for src in (0, 1):  # src == rank, then src != rank
        output = torch.ones(3, 3)
        dist.broadcast(output, src=src)
        assert torch.equal(output, torch.ones(3, 3))


@pytest.mark.fake_world(2, rank=0)
def test_scatter():
    output = torch.ones(3, 3)
    dist.scatter(output, [torch.ones(3, 3) * r for r in range(2)], src=0)
    assert torch.equal(output, torch.zeros(3, 3))  # rank 0's chunk
    output = torch.ones(3, 3)
    dist.scatter(output, None, src=1)
    assert torch.equal(output, torch.ones(3, 3))  # not the root: left as it was


@pytest.mark.fake_world(2, rank=0)
def test_alltoall():
    output_list = [torch.zeros(3, 3) for _ in range(2)]
    dist.all_to_all(output_list, [torch.full((3, 3), float(r)) for r in range(2)])
    assert all(torch.equal(o, torch.zeros(3, 3)) for o in output_list)  # every peer's input[0]


@pytest.mark.fake_world(2, rank=0)
def test_alltoall_base():
    # upstream passes a 3-row tensor with splits [1, 1], which torch 2.13
    # rejects ("Split sizes doesn't match total dim 0 size"); 2 rows fit.
    out_tensor = torch.zeros(2, 3)
    in_tensor = torch.arange(6.0).view(2, 3)
    dist.all_to_all_single(out_tensor, in_tensor, [1, 1], [1, 1])
    assert torch.equal(out_tensor, in_tensor[:1].repeat(2, 1))


@pytest.mark.fake_world(2, rank=0)
def test_send(collectives):
    dist.send(torch.ones(3, 3), 1)
    assert collectives[0].op == "send" and collectives[0].peer == 1


@pytest.mark.fake_world(2, rank=0)
def test_recv():
    output = torch.ones(3, 3)
    dist.recv(output, 1)
    assert torch.equal(output, torch.ones(3, 3))  # data from a peer: left as it was


@pytest.mark.fake_world(mesh={"dp": 2, "tp": 2}, device="cuda")
def test_fsdp_tp_fake_e2e(device_mesh):
    plans = [
        {"net1": ColwiseParallel(input_layouts=Shard(0)), "net2": RowwiseParallel(output_layouts=Shard(0))},
        {"net1": ColwiseParallel(), "net2": RowwiseParallel()},
    ]
    for plan in plans:
        module = parallelize_module(MLPModule(device="cuda"), device_mesh["tp"], plan)
        sharded = FSDP(module, use_orig_params=True, device_mesh=device_mesh["dp"])
        optim = torch.optim.Adam(sharded.parameters(), lr=0.0001)
        for i in range(10):
            torch.manual_seed(i + dist.get_rank())
            sharded(torch.randn(20, 10, device="cuda")).sum().backward()
            optim.step()


@pytest.mark.fake_world(2, rank=0)
def test_no_error_on_collective():
    tensor = torch.ones(3, 3)
    dist.all_reduce(tensor)
    assert torch.equal(tensor, torch.full((3, 3), 2.0))


@pytest.mark.fake_world(2, rank=0, fail=True)
def test_error_on_collective():
    tensor = torch.ones(3, 3)
    with pytest.raises(dist.DistBackendError, match="injected fault in all_reduce"):
        dist.all_reduce(tensor)
    with pytest.raises(dist.DistBackendError, match="injected fault in all_gather"):
        dist.all_gather([torch.empty_like(tensor) for _ in range(2)], tensor)
    with pytest.raises(dist.DistBackendError, match="injected fault in broadcast"):
        dist.broadcast(tensor, src=0)
    with pytest.raises(dist.DistBackendError, match="injected fault in barrier"):
        dist.barrier()


def test_fake_process_group_direct_usage_error():
    from torch._C._distributed_c10d import FakeProcessGroup

    with pytest.raises(TypeError, match="No constructor defined"):
        FakeProcessGroup(rank=0, world_size=3)


@pytest.mark.fake_world(3, rank=0)
def test_fake_process_group_proper_usage_dispatch():
    class RecordingMode(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    with RecordingMode() as mode:
        tensor = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
        dist.all_reduce(tensor)
    assert "aten.lift_fresh.default" in mode.ops
    assert "c10d.allreduce_.default" in mode.ops
