"""torchtitan's own llama3, parallelized by its own parallelize_llama, planned
on fake tensors: the program "Will it fit?" is for, not a model written here.

torchtitan's FSDP2 path sets a gradient divide factor, so its reduce-scatters
are PREMUL_SUM; its weights are initialised through functions it took by
reference when it was imported. Both run under tensors="fake". The first
test checks the plan's ledger record for record against real tensors at 8
ranks; the second plans Llama 3 8B at 1,024 ranks (FSDP2 128 x TP 8).

torchtitan comes from .ci/clients.txt (``pip install --no-deps -r
.ci/clients.txt``, as the README's test command runs it: planning needs none
of its dataset and logging stack); without it these tests skip, saying so.
examples/torchtitan_on_cpu.py builds the model on CPU as the trainer does.
"""

import pytest
import torch

from torchtitan_on_cpu import llama3, torchtitan_spmd_backend  # noqa: F401 - torchtitan on CPU, or a skip; the fixture

from pytest_fakepg import FakeWorld

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning")

GiB = 2**30


def plan_step(world: FakeWorld, flavor: str, dp: int, tp: int, seq_len: int) -> None:
    """One training step of torchtitan's llama3 `flavor` as its trainer runs it."""
    model, _, _ = llama3(world.world_size, flavor, seq_len, dp=dp, tp=tp)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    world.memory.reset()
    world.collectives.clear()  # the step, not the sharding
    model(torch.randint(0, 1000, (1, seq_len))).float().sum().backward()
    optimizer.step()


def ledger_of(tensors: str) -> tuple[list[tuple], dict[str, int]]:
    with FakeWorld(8, rank=5, tensors=tensors) as world:
        world.memory  # measured from the start with real tensors too (the mesh's rank map counts)
        plan_step(world, "debugmodel", dp=4, tp=2, seq_len=256)
        records = [(r.op, r.group, r.shapes, r.dtype, r.reduce_op) for r in world.collectives]
        return records, world.memory.current


def test_torchtitans_plan_records_on_fake_tensors_as_on_real_ones():
    real, real_memory = ledger_of("real")
    fake, fake_memory = ledger_of("fake")
    assert fake == real
    assert fake_memory == real_memory
    # FSDP2 under torchtitan's divide factor: PREMUL_SUM, on the "fsdp" mesh dimension.
    assert {r[4] for r in fake if r[0] == "reduce_scatter_tensor" and r[1] == "fsdp"} == {
        torch.distributed.ReduceOp.PREMUL_SUM
    }
    assert {r[1] for r in fake} == {"fsdp", "tp"}


@pytest.mark.fake_world(1024, rank=1023, tensors="fake")
def test_llama3_8b_fits_at_1024_ranks(fake_world, memory, collectives):
    plan_step(fake_world, "8B", dp=128, tp=8, seq_len=2048)
    # The rank's peak, under a budget: one step's activations dominate.
    assert memory.peak < 6 * GiB
    assert memory.at_peak["activations"] > 20 * memory.at_peak["parameters"]
    # FSDP2 gathers each block's bf16 shard in forward and backward, and
    # reduce-scatters fp32 gradients once (32 blocks, the embedding, the rest);
    # TP's sequence parallel gathers and scatters around every attention and
    # feed-forward.
    ledger = collectives.ledger()
    assert ledger["fsdp"] == {
        "all_gather_into_tensor": {"calls": 67, "bytes": 30_367_808, "dtypes": ["bfloat16"]},
        "reduce_scatter_tensor": {"calls": 34, "bytes": 4_019_208_192, "dtypes": ["float32"]},
    }
    assert {op: counts["calls"] for op, counts in ledger["tp"].items()} == {
        "reduce_scatter_tensor": 130, "all_gather_into_tensor": 130, "all_reduce": 65,
    }
