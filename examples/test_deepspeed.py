"""DeepSpeed as its users run it, in fake worlds: docs/deepspeed.md.

``deepspeed.init_distributed`` adopts the world's group, ``deepspeed.initialize``
builds the engine, and the step runs unchanged: in an exact world every rank
computes what one process computes, a uniform world records what ZeRO sends,
and on fake tensors a ZeRO-3 plan reads each rank's memory at any world size.
DeepSpeed comes from .ci/clients.txt; without it these tests skip, saying so.
"""

import os
import warnings

import pytest
import torch
import torch.nn as nn

os.environ.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed picks its accelerator at import
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    deepspeed = pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (pip install --no-deps -r .ci/clients.txt)")

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning")


def model(hidden: int = 32, layers: int = 2) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Linear(hidden, hidden) for _ in range(layers)])


def engine_for(net: nn.Module, world_size: int, stage: int, **extra):
    config = {"train_batch_size": 2 * world_size, "train_micro_batch_size_per_gpu": 2,
              "zero_optimization": {"stage": stage},
              "optimizer": {"type": "Adam", "params": {"lr": 1e-3, "torch_adam": True}}, **extra}
    deepspeed.init_distributed(dist_backend="gloo")
    engine, *_ = deepspeed.initialize(model=net, config=config, model_parameters=net.parameters())
    return engine


def step(engine, x: torch.Tensor) -> torch.Tensor:
    loss = engine(x).float().pow(2).mean()
    engine.backward(loss)
    engine.step()
    return loss


@pytest.mark.fake_world(4, values="exact")
def test_every_rank_of_zero3_computes_what_one_process_does():
    """ZeRO-3 shards the parameters over 4 ranks and gathers them for each
    layer: the forward is the unsharded model's, on every rank."""
    x = torch.randn(2, 32, generator=torch.Generator().manual_seed(1))
    expected = model()(x).pow(2).mean()
    loss = step(engine_for(model(), 4, stage=3), x)
    torch.testing.assert_close(loss, expected)


@pytest.mark.fake_world(8, rank=0)
def test_zero3_gathers_in_forward_and_backward_and_reduce_scatters_once(collectives):
    """What ZeRO-3 sends for a two-layer model: each parameter gathered
    for forward and again for backward, the gradients reduce-scattered."""
    step(engine_for(model(), 8, stage=3), torch.randn(2, 32))
    assert collectives.count("reduce_scatter_tensor") == 1
    assert collectives.count("all_gather_into_tensor") >= 4  # two layers, forward and backward


@pytest.mark.fake_world(1024, rank=0, tensors="fake")
def test_a_zero3_plan_reads_each_ranks_memory(memory, fake_world):
    """4 x Linear(1024, 1024) in bf16 at 1,024 ranks: each parameter is
    split on its own, 1,024 + 1 elements a rank (weight and bias, padded);
    the fp32 master shard and Adam's two moments are optimizer state.
    The overflow check reads "finite": an assumption the world states."""
    step(engine_for(model(1024, 4), 1024, stage=3, bf16={"enabled": True}, gradient_clipping=1.0),
         torch.randn(2, 1024, dtype=torch.bfloat16))
    shard = 4 * (1024 + 1)
    assert memory.current["parameters"] == 2 * shard
    assert memory.current["optimizer"] == 12 * shard + 4  # and Adam's step count
    assert fake_world.assumptions == ["fake values are finite: isfinite() is true, isnan() and isinf() false, "
                                      "and gradient-overflow checks (GradScaler, clip_grad_norm_'s "
                                      "error_if_nonfinite, DeepSpeed) find no overflow"]


@pytest.mark.fake_world(4, rank=1)
def test_what_a_uniform_world_cannot_answer():
    """In a uniform world only this rank runs, so a broadcast from rank 0
    leaves this rank's own values: DeepSpeed's check that every rank holds
    as many parameters as rank 0 fails on every rank but 0. Use an exact
    world (values="exact") for the ranks other than 0."""
    with pytest.raises(RuntimeError, match="disagreement on list length between rank0 and rank1"):
        step(engine_for(model(), 4, stage=3), torch.randn(2, 32))
