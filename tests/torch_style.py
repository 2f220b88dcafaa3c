"""torch-style test classes, written as torch's own distributed suites write
them (``DTensorTestBase`` with ``@with_comms``, ``MultiProcessTestCase``
setting up its own group, ``DTensorOpTestBase`` on threads, a plain
``ExactTestCase``), for tests/test_unittest.py to run in exact worlds. Not
collected by pytest: the module name does not start with ``test_``.

Each test body appends what its rank saw to ``SEEN``, so the tests can check
every rank ran, on its own instance.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from torch.distributed.tensor import Replicate, Shard, distribute_tensor
from torch.testing._internal.common_distributed import TEST_SKIPS, MultiProcessTestCase
from torch.testing._internal.distributed._tensor.common_dtensor import (
    DTensorOpTestBase,
    DTensorTestBase,
    with_comms,
)

from pytest_fakepg import ExactTestCase

SEEN: list[tuple] = []
# What torch's harness exits with when GPUs are too few ("multi-device-8" from 2.15 on).
TOO_FEW_GPUS = TEST_SKIPS.get("multi-gpu-8") or TEST_SKIPS["multi-device-8"]


class DTensorStyle(DTensorTestBase):
    """World size and device type are DTensorTestBase's own: 4 and cpu here."""

    @with_comms
    def test_each_rank_on_its_own_instance(self):
        mesh = self.build_device_mesh()
        SEEN.append(("instance", self.rank, dist.get_rank(), id(self), mesh.size(), self.device_type))
        full = torch.arange(8.0)
        sharded = distribute_tensor(full, mesh, [Shard(0)])
        self.assertEqual(sharded.to_local(), full[2 * self.rank: 2 * self.rank + 2])
        self.assertEqual(sharded.redistribute(mesh, [Replicate()]).to_local(), full)

    @with_comms
    def test_rank_divergent_code(self):
        if self.rank == 0:  # rank 0 alone sends, each other rank alone receives
            for peer in range(1, self.world_size):
                dist.send(torch.tensor([10.0 * peer]), peer)
        else:
            got = torch.zeros(1)
            dist.recv(got, 0)
            self.assertEqual(got.item(), 10.0 * self.rank)
        SEEN.append(("divergent", self.rank))

    @with_comms
    def test_instance_state_is_per_rank(self):
        self.mine = [self.rank]  # set by every rank on its own copy, then read after the others ran
        dist.barrier()
        self.mine.append(self.rank)
        dist.barrier()
        self.assertEqual(self.mine, [self.rank, self.rank])
        SEEN.append(("state", self.rank, tuple(self.mine)))

    @with_comms
    def test_fails_on_rank_2(self):
        t = torch.ones(1)
        dist.all_reduce(t)
        if self.rank == 2:
            self.assertEqual(t.item(), 5.0)
        dist.all_reduce(t)

    @with_comms
    def test_skips_on_rank_1(self):
        if self.rank == 1:
            self.skipTest("rank 1 has no data")
        dist.barrier()

    @with_comms
    def test_too_few_gpus_on_rank_3(self):
        if self.rank == 3:  # what torch's skip_if_lt_x_gpu does in a rank process
            sys.exit(TOO_FEW_GPUS.exit_code)
        dist.barrier()

    def test_exits_on_rank_1(self):
        if self.rank == 1:
            sys.exit(3)


class EightRanks(DTensorTestBase):
    @property
    def world_size(self):
        return 8

    @with_comms
    def test_two_dim_mesh(self):
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh(self.device_type, (2, 4), mesh_dim_names=("dp", "tp"))
        tp = mesh["tp"].get_local_rank()
        t = torch.tensor([float(tp)])
        dist.all_reduce(t, group=mesh["tp"].get_group())
        self.assertEqual(t.item(), 6.0)
        SEEN.append(("eight", self.rank, mesh["dp"].get_local_rank(), tp))


class ProcessStyle(MultiProcessTestCase):
    """Sets up its own group in the test body, as many c10d tests do."""

    def setUp(self):
        super().setUp()
        self._spawn_processes()

    def test_inits_its_own_group(self):
        dist.init_process_group("gloo", init_method=f"file://{self.file_name}", rank=self.rank,
                                world_size=self.world_size)
        t = torch.tensor([float(self.rank)])
        dist.all_reduce(t)
        self.assertEqual(t.item(), 6.0)
        SEEN.append(("process", self.rank, dist.get_backend()))
        dist.destroy_process_group()

    def test_wrong_world_size(self):
        dist.init_process_group("gloo", rank=self.rank, world_size=3)


class ThreadStyle(DTensorOpTestBase):
    """torch's thread harness (MultiThreadedTestCase)."""

    def test_on_threads_harness(self):
        mesh = self.build_device_mesh()
        sharded = distribute_tensor(torch.arange(4.0), mesh, [Shard(0)])
        self.assertEqual(sharded.to_local(), torch.tensor([float(self.rank)]))
        SEEN.append(("thread", self.rank))


class Plain(ExactTestCase):
    """No torch harness at all: ExactTestCase is the base."""

    def test_default_world(self):
        t = torch.tensor([1.0])
        dist.all_reduce(t)
        SEEN.append(("plain", self.rank, self.world_size, self.device_type, t.item()))


class PlainTwo(ExactTestCase):
    world_size = 2

    def test_two_ranks(self):
        SEEN.append(("two", self.rank, dist.get_world_size()))
