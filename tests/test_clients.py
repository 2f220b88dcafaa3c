"""The training libraries as their users run them, where installed (.ci/clients.txt):
DeepSpeed and Lightning in two worlds in a row (nothing they cache outlives
a world; exact ranks keep their own), ZeRO's steps planned to the end on
fake tensors with their memory in the right categories, and Megatron-core's
own initialisation in an exact world. Each skips, saying why, where its
library is absent."""

from __future__ import annotations

import os
import sys
import types
import warnings

import pytest
import torch
import torch.nn as nn

from pytest_fakepg import ExactWorld, FakeWorld
from pytest_fakepg.fake.values import ASSUMPTION

os.environ.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed picks its accelerator at import

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning")


def deepspeed():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (pip install --no-deps -r .ci/clients.txt)")


def zero_step(world_size: int, stage: int, bf16: bool = False, clip: float | None = None, hidden: int = 16) -> float:
    """One DeepSpeed step of a two-layer model, as a DeepSpeed user writes it."""
    ds = deepspeed()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(hidden, hidden), nn.Linear(hidden, hidden))
    config = {"train_batch_size": 2 * world_size, "train_micro_batch_size_per_gpu": 2,
              "zero_optimization": {"stage": stage},
              "optimizer": {"type": "Adam", "params": {"lr": 1e-3, "torch_adam": True}}}
    if bf16:
        config["bf16"] = {"enabled": True}
    if clip is not None:
        config["gradient_clipping"] = clip
    ds.init_distributed(dist_backend="gloo")
    engine, *_ = ds.initialize(model=model, config=config, model_parameters=model.parameters())
    torch.manual_seed(1)
    x = torch.randn(2, hidden, dtype=torch.bfloat16 if bf16 else torch.float32)
    loss = engine(x).float().pow(2).mean()
    engine.backward(loss)
    engine.step()
    return loss.item() if not isinstance(loss, torch._subclasses.FakeTensor) else float("nan")


@pytest.mark.parametrize("values", ["uniform", "exact"])
def test_deepspeed_runs_in_two_worlds_in_a_row(values: str) -> None:
    """DeepSpeed caches its world group: the second world found the first
    one's ("Group ... is not registered"), and exact ranks shared it."""
    losses = []
    kind = ExactWorld if values == "exact" else FakeWorld
    for _ in range(2):
        with kind(2, values=values) as world:
            losses.append(world.run(zero_step, 2, 3) if values == "exact" else [zero_step(2, 3)])
    assert losses[0] == losses[1]
    assert len(set(losses[0])) == 1  # every rank, the same loss
    assert sys.modules["deepspeed.comm.comm"].cdb is None  # as before any world


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_steps_plan_to_the_end_on_fake_tensors(stage: int) -> None:
    """bf16 with gradient clipping: the overflow checks read "finite", the
    casts of fake parameters work, and the step's memory is in its
    categories: 2 x Linear(256, 256) is 131,584 parameters, 2,056 a rank of
    64 (each parameter split on its own under ZeRO-3: 1,024 + 4 per layer)."""
    with FakeWorld(64, tensors="fake") as world:
        zero_step(64, stage, bf16=True, clip=1.0, hidden=256)
        now = world.memory.current
        ops = {op for group in world.collectives.ledger().values() for op in group}
    shard = 2056
    bf16_params = 2 * (shard if stage == 3 else 131_584)
    assert now["parameters"] == bf16_params
    assert now["optimizer"] == 12 * shard + 4  # fp32 master, exp_avg, exp_avg_sq; the step count
    assert world.assumptions == [ASSUMPTION]
    assert ("reduce_scatter_tensor" in ops) == (stage == 3)


def lightning():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pytest.importorskip("lightning_fabric", reason="Lightning is not installed (pip install --no-deps -r .ci/clients.txt)")


def fabric_rank() -> tuple[int, int]:
    fabric = lightning().Fabric(accelerator="cpu", devices=int(os.environ["WORLD_SIZE"]), strategy="ddp")
    fabric.launch()
    from lightning_utilities.core.rank_zero import rank_zero_only

    return fabric.global_rank, rank_zero_only.rank


def test_lightning_ranks_are_their_own_and_as_before_after_the_world() -> None:
    lightning()
    from lightning_utilities.core.rank_zero import rank_zero_only

    before = rank_zero_only.rank
    with ExactWorld(4) as world:
        assert world.run(fabric_rank) == [(0, 0), (1, 1), (2, 2), (3, 3)]
    assert rank_zero_only.rank == before
    with FakeWorld(4, rank=3):
        assert fabric_rank() == (3, 3)
    assert rank_zero_only.rank == before


def test_lightning_knows_it_was_launched_and_refuses_devices_that_disagree() -> None:
    fabric = lightning()
    with FakeWorld(4), pytest.raises(ValueError, match=r"`devices=2`.*does not match the world size \(4\)"):
        fabric.Fabric(accelerator="cpu", devices=2, strategy="ddp").launch()


def megatron():
    # megatron-core imports triton in one module its CPU paths never call.
    name = "megatron.core.transformer.moe.ops.paged_stash"
    if name not in sys.modules:
        stub = types.ModuleType(name)
        stub.__getattr__ = lambda attr: None
        sys.modules[name] = stub
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pytest.importorskip("megatron.core.parallel_state",
                                   reason="megatron-core is not installed (see ../shared/CLIENTS.md)")


def test_megatron_initialises_on_every_rank_of_an_exact_world() -> None:
    ps = megatron()

    def program():
        ps.initialize_model_parallel(tensor_model_parallel_size=2, pipeline_model_parallel_size=2)
        got = (ps.get_tensor_model_parallel_rank(), ps.get_pipeline_model_parallel_rank(),
               ps.get_data_parallel_world_size())
        ps.destroy_model_parallel()
        return got

    for _ in range(2):
        with ExactWorld(8) as world:
            assert world.run(program) == [(r % 2, r // 4, 2) for r in range(8)]
    assert not ps.model_parallel_is_initialized()
