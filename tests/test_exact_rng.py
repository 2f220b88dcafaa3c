"""Exact worlds: each rank's random streams are those a separate process would have."""

from __future__ import annotations

import random

import pytest
import torch
import torch.distributed as dist

from pytest_fakepg import ExactWorld

from .conftest import exact

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # torch 2.13 renames


# -- RNG ---------------------------------------------------------------------------


def test_each_rank_gets_the_stream_a_separate_process_would() -> None:
    torch.manual_seed(7)
    expected = [torch.rand(3) for _ in range(2)]  # what seed 7 gives, twice over

    def program() -> tuple[torch.Tensor, torch.Tensor, float]:
        rank = dist.get_rank()
        torch.manual_seed(7 if rank == 1 else rank)
        first = torch.rand(3)
        dist.barrier()  # every other rank draws meanwhile
        random.seed(rank)
        return first, torch.rand(3), random.random()

    with ExactWorld(3) as world:
        results = world.run(program)
    assert torch.equal(results[1][0], expected[0]) and torch.equal(results[1][1], expected[1])
    random.seed(2)
    assert results[2][2] == random.random()
    assert not torch.equal(results[0][0], results[2][0])


def test_ranks_start_on_the_callers_torch_stream_which_goes_on_untouched() -> None:
    # The scheduler swaps the CPU generator itself: its engine, and the normal
    # sample randn caches (a rank's second randn(1) uses the first's spare).
    def draws(seed: int | None = None) -> list[torch.Tensor]:
        if seed is not None:
            torch.manual_seed(seed)
        return [torch.rand(2), torch.randn(1), torch.randn(1)]

    torch.manual_seed(11)
    torch.rand(3)
    state = torch.get_rng_state()
    callers_next = draws()
    per_seed = {rank: draws(100 + rank) for rank in range(3)}
    torch.set_rng_state(state)

    def program() -> list[torch.Tensor]:
        rank = dist.get_rank()
        inherited = torch.rand(2)
        torch.manual_seed(100 + rank)
        first = [torch.rand(2), torch.randn(1)]
        dist.barrier()  # every other rank draws meanwhile
        return [inherited, *first, torch.randn(1)]

    with ExactWorld(3) as world:
        results = world.run(program)
    for rank, (inherited, *seeded) in enumerate(results):
        assert torch.equal(inherited, callers_next[0])
        assert all(torch.equal(a, b) for a, b in zip(seeded, per_seed[rank]))
    assert all(torch.equal(a, b) for a, b in zip(draws(), callers_next))


def test_each_rank_draws_from_a_copy_of_the_callers_python_random() -> None:
    random.seed(11)
    expected = [random.random(), random.random()]
    random.seed(11)

    def program() -> list[float]:
        if dist.get_rank() == 1:
            dist.barrier()
            return []  # never draws: rank 2 still starts where the caller was
        first = random.random()
        dist.barrier()  # the other ranks draw meanwhile
        return [first, random.random()]

    with ExactWorld(3) as world:
        results = world.run(program)
    assert results == [expected, [], expected]
    assert random.random() == expected[0]  # the caller's own stream did not move


def test_a_run_leaves_no_garbage_for_the_cycle_collector() -> None:
    """Garbage in reference cycles lives until a collection finds it; each
    run's would make the collector's full passes (over all of torch's objects)
    come sooner. In a fresh process: what earlier tests' worlds left behind
    may be let go during a run, and is not the run's."""
    import subprocess
    import sys

    program = """
import gc, random, torch, torch.distributed as dist
from pytest_fakepg import ExactWorld

def program():
    t = torch.tensor([random.random()])
    dist.all_reduce(t)
    return t.item()

with ExactWorld(3) as world:
    world.run(program)  # warm: what is made once per process
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    world.run(program)
    gc.collect()
    print(sorted({type(o).__qualname__ for o in gc.garbage}))
    gc.set_debug(0)
"""
    run = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.filterwarnings("ignore:DTensor random operators:UserWarning")
@exact
def test_dtensor_random_ops_match_one_process(rank: int) -> None:
    from torch.distributed.tensor import Replicate, distribute_tensor

    mesh = dist.device_mesh.init_device_mesh("cpu", (4,))
    torch.manual_seed(0)
    d = distribute_tensor(torch.zeros(8), mesh, [Replicate()])
    d.uniform_()
    full = d.full_tensor()
    gathered = [torch.zeros(8) for _ in range(4)]
    dist.all_gather(gathered, full)
    assert all(torch.equal(g, gathered[0]) for g in gathered)  # replicas agree


