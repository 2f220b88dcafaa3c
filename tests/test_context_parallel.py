"""Context parallelism on CPU, through torch's own API
(``torch.distributed.tensor.experimental.context_parallel``): ring attention
over the CPU attention kernel, which the world supplies (NOTE [Context
parallel on CPU]), in exact, uniform and fake-tensor worlds.
examples/test_torchtitan_long_context.py runs torchtitan's llama3 with CP."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.device_mesh import init_device_mesh

from pytest_fakepg import ExactWorld, FakeWorld

from .conftest import RunTests

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

SHAPE = (1, 2, 16, 8)  # batch, heads, sequence, head dim


def ring_attention_against_the_whole() -> tuple[float, list[float], tuple[int, ...]]:
    """Causal SDPA under ``context_parallel`` over every rank, forward and
    backward, unsharded again: the largest difference from the same
    attention on one rank, for the output and each gradient, and the local
    query's shape inside the block."""
    from torch.distributed.tensor.experimental import context_parallel
    from torch.distributed.tensor.experimental._attention import context_parallel_unshard

    torch.manual_seed(0)
    q, k, v = (torch.randn(SHAPE, requires_grad=True) for _ in range(3))
    whole = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    whole.sum().backward()
    mesh = init_device_mesh("cpu", (dist.get_world_size(),), mesh_dim_names=("cp",))
    cq, ck, cv = (t.detach().clone() for t in (q, k, v))
    with context_parallel(mesh, buffers=[cq, ck, cv], buffer_seq_dims=[2, 2, 2]):
        for t in (cq, ck, cv):
            t.requires_grad_()
        out = F.scaled_dot_product_attention(cq, ck, cv, is_causal=True)
        out.sum().backward()
        grads = [t.grad for t in (cq, ck, cv)]
        for t in (cq, ck, cv):
            t.requires_grad_(False)  # context_parallel resizes its buffers back
        local = tuple(cq.shape)
        out, *grads = context_parallel_unshard(mesh, [out, *grads], [2, 2, 2, 2])
    return ((out - whole).abs().max().item(), [(g - t.grad).abs().max().item() for g, t in zip(grads, (q, k, v))],
            local)


@pytest.mark.parametrize("size", [2, 4])
def test_every_rank_gets_the_attention_of_the_whole_sequence(size: int) -> None:
    with ExactWorld(size) as world:
        results = world.run(ring_attention_against_the_whole)
        ops = [(r.op, r.dtype) for r in world.collectives if r.rank == 0]
    for out, grads, local in results:
        assert out < 1e-5 and max(grads) < 1e-5
        assert local == (1, 2, 16 // size, 8)
    # Forward gathers each rank's keys and values (4 tensors: the buffers'
    # sharding, then the ring); backward gathers them again and passes the
    # gradients round the ring, one all_to_all a step.
    assert ops.count(("all_to_all_single", torch.float32)) == size
    assert ("all_gather_into_tensor", torch.float32) in ops


@pytest.mark.parametrize("tensors", ["real", "fake"])
def test_one_rank_runs_the_ring_in_a_uniform_world(tensors: str) -> None:
    """The ring's all_to_alls are ring shifts, which a uniform world carries
    (NOTE [all_to_all under uniform values]); on fake tensors it plans the
    same calls."""
    from torch.distributed.tensor.experimental import context_parallel

    with FakeWorld(4, rank=1, tensors=tensors) as world:
        mesh = init_device_mesh("cpu", (4,), mesh_dim_names=("cp",))
        q, k, v = (torch.randn(SHAPE) for _ in range(3))
        with context_parallel(mesh, buffers=[q, k, v], buffer_seq_dims=[2, 2, 2]):
            for t in (q, k, v):
                t.requires_grad_()
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            out.sum().backward()
            assert out.shape == q.grad.shape == (1, 2, 4, 8)
            for t in (q, k, v):
                t.requires_grad_(False)
        passes = [r.shapes for r in world.collectives if r.op == "all_to_all_single"]
    assert passes == [((2 * 2 * 4 * 8,),)] * 4  # the key and value gradients, each step


def test_torch_cp_first_imported_inside_an_exact_world(run_tests: RunTests) -> None:
    """The CPU ring goes into torch's CP table as the CP module's import
    finishes (NOTE [Patches]), here in a rank of an exact world, whose own
    import watch asks every finder in turn."""
    source = '''
import sys

@pytest.mark.fake_world(2, values="exact")
def test_it(rank):
    if rank == 0:  # the first rank to run: the first import is its
        assert "torch.distributed.tensor.experimental._context_parallel._attention" not in sys.modules
    from ring import ring_attention_against_the_whole
    out, grads, _ = ring_attention_against_the_whole()
    assert out < 1e-5 and max(grads) < 1e-5
'''
    import inspect
    from pathlib import Path

    helper = f"import torch, torch.distributed as dist, torch.nn.functional as F\n" \
             f"from torch.distributed.device_mesh import init_device_mesh\nSHAPE = {SHAPE}\n\n" \
             + inspect.getsource(ring_attention_against_the_whole)
    Path("ring.py").write_text(helper)
    result = run_tests(source)
    result.assert_outcomes(passed=1)


def test_the_cpu_ring_takes_query_key_and_value_sharded_along_the_sequence() -> None:
    """Anything else is refused, naming what was given."""
    from torch.distributed.tensor import DTensor, Replicate, Shard
    from torch.distributed.tensor.experimental import _attention

    with FakeWorld(2, rank=0):
        mesh = init_device_mesh("cpu", (2,), mesh_dim_names=("cp",))
        q = DTensor.from_local(torch.randn(SHAPE), mesh, [Shard(2)], run_check=False)
        kv = DTensor.from_local(torch.randn(SHAPE), mesh, [Replicate()], run_check=False)
        _attention._enable_context_parallel_dispatcher()
        try:
            with pytest.raises(NotImplementedError, match=r"takes query, key and value sharded along the sequence "
                                                          r"\(Shard\(2\) on one 1-D mesh\); got \{'query': "
                                                          r"\(Shard\(dim=2\),\), 'key': \(Replicate\(\),\)"):
                F.scaled_dot_product_attention(q, kv, kv, is_causal=True)
        finally:
            _attention._disable_context_parallel_dispatcher()
