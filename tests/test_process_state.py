"""Per-rank process state (NOTE [Per-rank process state]): what a rank's
program changes in the module-level state of torch's distributed stack is
that rank's alone, as in its own process, and is the caller's again after
the run. One test per kind of state, each with the torch feature that
changes it; each would fail with the ranks sharing the state."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.distributed.tensor import Replicate, Shard, distribute_tensor

from pytest_fakepg import ExactWorld


def exact(n: int, program, mesh=None):
    with ExactWorld(n, mesh=mesh) as world:
        return world.run(program)


def test_a_flag_set_in_a_with_block_is_the_ranks_own() -> None:
    """use_min_cost_redistribution_plan sets a module global and restores it
    on exit: with ranks interleaving inside the block, a shared flag would be
    restored to another rank's value, and stay wrong after the run."""
    from torch.distributed.tensor import _redistribute
    from torch.distributed.tensor._redistribute import use_min_cost_redistribution_plan

    def program():
        rank = dist.get_rank()
        with use_min_cost_redistribution_plan(enabled=rank % 2 == 0):
            dist.barrier()  # every rank enters before any leaves
            seen = _redistribute._FORCE_MIN_COST_REDISTRIBUTION_PLAN
            dist.barrier()
        return seen, _redistribute._FORCE_MIN_COST_REDISTRIBUTION_PLAN

    assert exact(4, program) == [(True, None), (False, None), (True, None), (False, None)]
    assert _redistribute._FORCE_MIN_COST_REDISTRIBUTION_PLAN is None


def test_dtensor_op_handlers_registered_by_loss_parallel_are_the_ranks_own() -> None:
    """loss_parallel() adds DTensor's custom op handlers on entry and removes
    them on exit: shared, the second rank's removal raised KeyError."""
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor.parallel import loss_parallel

    handlers = dict(DTensor._op_dispatcher._custom_op_handlers)
    torch.manual_seed(0)
    logits, target = torch.randn(4, 8), torch.tensor([1, 5, 0, 7])
    expected = F.cross_entropy(logits, target)

    def program():
        mesh = dist.device_mesh.init_device_mesh("cpu", (4,))
        sharded = distribute_tensor(logits, mesh, [Shard(1)])  # the vocabulary dimension, as TP's output
        with loss_parallel():
            dist.barrier()  # every rank inside the block at once
            loss = F.cross_entropy(sharded, target)
        return loss.full_tensor()

    for loss in exact(4, program):
        torch.testing.assert_close(loss, expected)
    assert DTensor._op_dispatcher._custom_op_handlers == handlers


def test_global_module_hooks_of_comm_debug_mode_are_the_ranks_own() -> None:
    """CommDebugMode registers global module hooks: shared, rank 1's forward
    fired rank 0's hooks while rank 0 waited in a collective inside its block
    ("The Module hierarchy tracking is wrong")."""
    from torch.distributed.tensor.debug import CommDebugMode
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.up, self.down = nn.Linear(4, 8), nn.Linear(8, 4)

        def forward(self, x):
            return self.down(torch.relu(self.up(x)))

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = MLP(), MLP()

        def forward(self, x):
            return self.b(self.a(x))

    plan = {f"{m}.{p}": style() for m in "ab" for p, style in (("up", ColwiseParallel), ("down", RowwiseParallel))}

    def program():
        mesh = dist.device_mesh.init_device_mesh("cpu", (2,))
        torch.manual_seed(0)
        model = parallelize_module(Two(), mesh, plan)
        comm = CommDebugMode()
        with comm:
            model(torch.ones(2, 4, requires_grad=True)).sum().backward()
        return comm.get_total_counts(), sorted(comm.comm_module_counts)

    modules = ["Global", "Two", "Two.a", "Two.a.down", "Two.a.up", "Two.b", "Two.b.down", "Two.b.up"]
    assert exact(2, program) == [(4, modules)] * 2
    hooks = nn.modules.module
    assert not hooks._global_forward_pre_hooks and not hooks._global_forward_hooks


def test_a_global_hook_a_rank_registers_fires_for_that_rank_only() -> None:
    fired: list[tuple[int, int]] = []

    def program():
        rank = dist.get_rank()
        if rank == 1:
            handle = nn.modules.module.register_module_forward_hook(lambda m, i, o: fired.append((1, dist.get_rank())))
        dist.barrier()
        nn.Identity()(torch.ones(1))  # every rank runs a module; only rank 1 hooked one
        dist.barrier()
        if rank == 1:
            handle.remove()

    exact(3, program)
    assert fired == [(1, 1)]
    assert not nn.modules.module._global_forward_hooks


def test_cached_redistribute_plans_are_the_ranks_own_however_imported() -> None:
    """_gen_transform_infos is a functools cache keyed by the specs, which
    compare equal across ranks; a plan's logical shapes depend on the rank's
    coordinate when shards are uneven. Called by name, as torch's tests import
    it, each rank gets its own plan, and clearing the cache by that name
    clears what the rank sees."""
    from torch.distributed.tensor._redistribute import _gen_transform_infos

    full = torch.arange(20.0).reshape(5, 4)  # 5 rows on 2 x 2: 3 + 2, then 2 + 1 / 1 + 1

    def program():
        mesh = dist.device_mesh.init_device_mesh("cpu", (2, 2))
        row = mesh.get_coordinate()[0]
        src = distribute_tensor(full, mesh, [Shard(0), Shard(0)])
        dst_placements = (Shard(0), Replicate())
        plans = []
        for _ in range(2):
            dst = src.redistribute(mesh, dst_placements)
            infos = _gen_transform_infos(src._spec, dst._spec)
            plans.append([tuple(info.logical_shape) for info in infos])
            _gen_transform_infos.cache_clear()
        torch.testing.assert_close(dst.full_tensor(), full)
        return row, plans

    got = exact(4, program)
    # mesh dim 1 splits this rank's rows of mesh dim 0: 3 rows for row 0, 2 for row 1
    assert got == [(row, [[(3 if row == 0 else 2, 4)]] * 2) for row in (0, 0, 1, 1)]


def test_rank_free_planning_is_done_once_for_every_rank(monkeypatch) -> None:
    """NOTE [Sharing rank-free work]: with even shards every rank's plan is
    the same, so the ranks of a world share one; with uneven shards each
    rank's plan has its own logical shapes, while the graph search behind it
    (costed from global shapes) is still shared. Values are right either way."""
    from torch.distributed.tensor import _redistribute
    from torch.distributed.tensor._redistribute import use_min_cost_redistribution_plan

    plans, searches = [], []
    plan = _redistribute._gen_transform_infos_non_cached
    search = _redistribute.DTensorRedistributePlanner.find_min_cost_path

    def counted(calls, fn):
        return lambda *args: calls.append(dist.get_rank()) or fn(*args)

    monkeypatch.setattr(_redistribute, "_gen_transform_infos_non_cached", counted(plans, plan))
    monkeypatch.setattr(_redistribute.DTensorRedistributePlanner, "find_min_cost_path", counted(searches, search))

    def program(rows):
        def run():
            mesh = dist.device_mesh.init_device_mesh("cpu", (2, 2, 2))
            full = torch.arange(rows * 8.0).reshape(rows, 8)
            with use_min_cost_redistribution_plan():
                moved = distribute_tensor(full, mesh, [Shard(0), Shard(0), Shard(1)]).redistribute(
                    mesh, [Replicate(), Shard(1), Shard(0)])
            return torch.equal(moved.full_tensor(), full)
        return run

    assert exact(8, program(16)) == [True] * 8  # 16 rows: even on 8 ranks
    # two plans (the redistribute, then full_tensor's), one graph search: for all 8 ranks
    assert (len(plans), len(searches)) == (2, 1)
    plans.clear()
    searches.clear()
    assert exact(8, program(13)) == [True] * 8  # uneven: each rank plans, one search
    assert (len(plans), len(searches)) == (16, 1)
