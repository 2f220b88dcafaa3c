"""Exact worlds: DTensor, tensor parallel and FSDP2 match one process."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn

from pytest_fakepg import ExactWorld

from .conftest import DEVICES, exact

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # torch 2.13 renames


# -- DTensor and parity --------------------------------------------------------------


@exact
def test_dtensor_distribute_redistribute_full_tensor(rank: int) -> None:
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    mesh = dist.device_mesh.init_device_mesh("cpu", (4,))
    full = torch.arange(16, dtype=torch.float).reshape(4, 4)
    d = distribute_tensor(full, mesh, [Shard(0)])
    assert d.to_local().tolist() == [full[rank].tolist()]
    assert torch.equal(d.full_tensor(), full)
    r = (d * (rank + 1)).redistribute(mesh, [Replicate()])  # a local op that differs per rank
    assert torch.equal(r.to_local(), full * torch.arange(1, 5, dtype=torch.float).reshape(4, 1))
    assert torch.equal(d.sum().full_tensor(), full.sum())


def test_sharding_decisions_that_depend_on_the_rank_are_the_ranks_own() -> None:
    # 10 rows over 4 ranks: 3, 3, 3 and 1 rows. A view's sharding decision
    # holds the local shape, computed from the rank's coordinate; the second
    # world reuses the first's decisions (NOTE [compat: sharding decisions
    # across worlds]), every rank its own.
    from torch.distributed.tensor import Shard, distribute_tensor

    full = torch.arange(40.0).view(10, 4)

    def program() -> tuple[tuple[int, ...], torch.Tensor]:
        mesh = dist.device_mesh.init_device_mesh("cpu", (4,))
        viewed = distribute_tensor(full, mesh, [Shard(0)]).view(10, 2, 2)
        return tuple(viewed.to_local().shape), viewed.full_tensor()

    for _ in range(2):
        with ExactWorld(4) as world:
            results = world.run(program)
        assert [shape for shape, _ in results] == [(3, 2, 2), (3, 2, 2), (3, 2, 2), (1, 2, 2)]
        for _, whole in results:
            assert torch.equal(whole, full.view(10, 2, 2))


def test_each_rank_redistributes_with_its_own_shapes() -> None:
    # Dimension 0 sharded on both mesh dimensions, unevenly: rows 0-3 for
    # ranks 0 and 1, rows 4-6 for ranks 2 and 3. torch's redistribute caches
    # are per process and hold the shapes of the rank that filled them; each
    # rank needs its own (NOTE [compat: redistribute caches]).
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    full = torch.arange(14.0).view(7, 2)

    def program() -> tuple[int, bool]:
        mesh = dist.device_mesh.init_device_mesh("cpu", (2, 2))
        moved = distribute_tensor(full, mesh, [Shard(0), Shard(0)]).redistribute(mesh, [Shard(0), Replicate()])
        return moved.to_local().shape[0], torch.equal(moved.full_tensor(), full)

    with ExactWorld(4) as world:
        assert world.run(program) == [(4, True), (4, True), (3, True), (3, True)]


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Linear(8, 16)
        self.w2 = nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(torch.relu(self.w1(x)))


def _reference(steps: int, batch: torch.Tensor) -> tuple[MLP, list[float]]:
    torch.manual_seed(0)
    model = MLP().to(batch.device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for _ in range(steps):
        loss = model(batch).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return model, losses


@pytest.mark.parametrize("device", DEVICES)
@exact
def test_tensor_parallel_matches_one_device(rank: int, device: str) -> None:
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    batch = torch.randn(4, 8, generator=torch.Generator().manual_seed(1)).to(device)
    reference, losses = _reference(3, batch)
    torch.manual_seed(0)
    model = MLP().to(device)
    mesh = dist.device_mesh.init_device_mesh(device, (4,))
    parallelize_module(model, mesh, {"w1": ColwiseParallel(), "w2": RowwiseParallel()})
    assert model.w1.weight.to_local().shape == (4, 8)  # each rank holds a quarter
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(3):
        loss = model(batch).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        assert loss.item() == pytest.approx(losses[step], rel=1e-5)
    for name, p in reference.named_parameters():
        torch.testing.assert_close(model.get_parameter(name).full_tensor(), p.detach())


@pytest.mark.parametrize("device", DEVICES)
@exact
def test_fsdp2_matches_one_device(rank: int, device: str) -> None:
    from torch.distributed.fsdp import fully_shard

    batch = torch.randn(8, 8, generator=torch.Generator().manual_seed(1)).to(device)
    reference, losses = _reference(3, batch)
    torch.manual_seed(0)
    model = MLP().to(device)
    mesh = dist.device_mesh.init_device_mesh(device, (4,))
    fully_shard(model.w1, mesh=mesh)
    fully_shard(model, mesh=mesh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mine = batch[rank * 2 : rank * 2 + 2]  # each rank its own quarter of the batch
    for step in range(3):
        loss = model(mine).pow(2).mean()
        loss.backward()  # FSDP2 averages gradients over the ranks
        opt.step()
        opt.zero_grad()
        total = loss.detach().clone()
        dist.all_reduce(total, op=dist.ReduceOp.AVG)
        assert total.item() == pytest.approx(losses[step], rel=1e-5)
    for name, p in reference.named_parameters():
        torch.testing.assert_close(model.get_parameter(name).full_tensor(), p.detach())


