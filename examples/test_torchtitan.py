"""torchtitan's own llama3, parallelized by its own parallelize_llama, planned
on fake tensors: the program "Will it fit?" is for, not a model written here.

torchtitan's FSDP2 path sets a gradient divide factor, so its reduce-scatters
are PREMUL_SUM; its weights are initialised through functions it took by
reference when it was imported. Both run under tensors="fake". The first
test checks the plan's ledger record for record against real tensors at 8
ranks; the second plans Llama 3 8B at 1,024 ranks (FSDP2 128 x TP 8).

torchtitan comes from .ci/clients.txt (``pip install --no-deps -r
.ci/clients.txt``, as the README's test command runs it: planning needs none
of its dataset and logging stack); without it these tests skip, saying so. On CPU:
SDPA attention in place of flex attention (which needs block masks), the CPU
device type, and the "partial_dtensor" backend (torchtitan 0.3.0's default
"spmd_types" path refuses its own plain norm weights under FSDP2, with real
tensors too).
"""

import dataclasses
import warnings

import pytest
import torch

import torchtitan_on_cpu  # noqa: F401 - torchtitan on a CPU-only machine, or a skip

with warnings.catch_warnings():  # torch.jit's deprecation, met on torchtitan's imports
    warnings.simplefilter("ignore", DeprecationWarning)
    import torchtitan.distributed.parallel_dims as parallel_dims_module
    from torchtitan.config import CompileConfig, ParallelismConfig, TrainingConfig
    from torchtitan.distributed import ParallelDims
    from torchtitan.models.common.attention import ScaledDotProductAttention
    from torchtitan.models.llama3 import model_registry
    from torchtitan.models.llama3.sharding import set_llama3_sharding_config

from pytest_fakepg import FakeWorld

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning")

GiB = 2**30


def plan_step(world: FakeWorld, flavor: str, dp: int, tp: int, seq_len: int) -> None:
    """One training step of torchtitan's llama3 `flavor` as its trainer
    builds it: meta -> parallelize_llama -> to_empty -> init_weights."""
    parallel_dims_module.device_type = "cpu"
    spec = model_registry(flavor)
    config = spec.model
    for layer in config.layers:
        layer.attention.inner_attention = ScaledDotProductAttention.Config()
        # What the trainer's update_from_config does (it imports the trainer's
        # dataset stack): each layer's RoPE cache sized to the run's sequence.
        layer.attention.rope = dataclasses.replace(layer.attention.rope, max_seq_len=seq_len)
    parallelism = ParallelismConfig(
        data_parallel_shard_degree=dp, tensor_parallel_degree=tp, spmd_backend="partial_dtensor"
    )
    set_llama3_sharding_config(config, enable_sp=parallelism.enable_sequence_parallel)
    dims = ParallelDims.from_config(parallelism, world.world_size)
    dims.build_mesh()
    with torch.device("meta"):
        model = config.build()
    model = spec.parallelize_fn(
        model, parallel_dims=dims, training=TrainingConfig(seq_len=seq_len, local_batch_size=1),
        parallelism=parallelism, compile_config=CompileConfig(), ac_config=None, dump_folder="/tmp",
    )
    model.to_empty(device="cpu")
    with torch.no_grad():
        model.init_weights(buffer_device=None)
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
