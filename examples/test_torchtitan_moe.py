"""torchtitan's own DeepSeek-V3 with expert parallelism, planned on fake
tensors: the router's own topk picks each token's experts from scores no
plan has, so the plan assumes balanced routing (NOTE [Routing on fake
tensors]) and says so; the token counts, the dispatch's all_to_all splits
and the grouped GEMMs' shapes all follow from it.

The check: the plan's ledger equals, call for call and byte for byte, the
ledger of the same step on real tensors with torchtitan's own balanced
routing (``_debug_force_load_balance``, what ``debug.moe_force_load_balance``
sets), in a uniform world of 8 ranks with EP 4.

torchtitan comes from .ci/clients.txt; without it this skips, saying so. On
CPU, as in examples/test_torchtitan.py: SDPA attention, the CPU device type,
the "partial_dtensor" backend (set as torchtitan's trainer sets it), and a
stand-in for the triton kernels its expert-parallel module imports
(examples/torchtitan_on_cpu.py).
"""

import warnings

import pytest
import torch

from torchtitan_on_cpu import torchtitan_spmd_backend  # noqa: F401 - torchtitan on CPU, or a skip; the fixture

with warnings.catch_warnings():  # torch.jit's deprecation, met on torchtitan's imports
    warnings.simplefilter("ignore", DeprecationWarning)
    import torchtitan.distributed.parallel_dims as parallel_dims_module
    import torchtitan.distributed.utils as dist_utils
    from torchtitan.config import CompileConfig, ParallelismConfig, TrainingConfig
    from torchtitan.distributed import ParallelDims
    from torchtitan.models.common.attention import ScaledDotProductAttention
    from torchtitan.models.deepseek_v3 import model_registry
    from torchtitan.models.deepseek_v3.sharding import set_deepseek_v3_sharding_config

from pytest_fakepg import ExactWorld, FakeWorld
from pytest_fakepg.fake.values import BALANCED

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning")


def step(world: FakeWorld, ep: int, force_balance: bool, seq_len: int = 128,
         flavor: str = "debugmodel") -> torch.nn.Module:
    """One forward and backward of DeepSeek-V3 `flavor` as torchtitan's
    trainer builds it; returns the model."""
    parallel_dims_module.device_type = "cpu"
    spec = model_registry(flavor)
    config = spec.model
    for layer in config.layers:
        layer.attention.inner_attention = ScaledDotProductAttention.Config()
        if getattr(layer, "moe", None) is not None:
            layer.moe.router._debug_force_load_balance = force_balance
    parallelism = ParallelismConfig(data_parallel_shard_degree=world.world_size, expert_parallel_degree=ep,
                                    spmd_backend="partial_dtensor")
    dist_utils.set_spmd_backend(parallelism.spmd_backend)  # as the trainer does
    set_deepseek_v3_sharding_config(config, enable_sp=False, enable_ep=ep > 1)  # as update_from_config does
    dims = ParallelDims.from_config(parallelism, world.world_size)
    dims.build_mesh()
    with torch.device("meta"):
        model = config.build()
    model = spec.parallelize_fn(model, parallel_dims=dims, training=TrainingConfig(seq_len=seq_len, local_batch_size=1),
                                parallelism=parallelism, compile_config=CompileConfig(), ac_config=None,
                                dump_folder="/tmp")
    model.to_empty(device="cpu")
    with torch.no_grad():
        model.init_weights(buffer_device=None)
    # The step, not the initialisation: torch 2.14's trunc_normal_ resamples
    # by reading values (an all_gather of a bool mask per weight on real
    # tensors), which a plan on fake tensors has none of.
    world.collectives.clear()
    model(torch.randint(0, 1000, (1, seq_len))).float().sum().backward()
    return model


def test_expert_parallel_plan_has_the_ledger_of_balanced_real_routing() -> None:
    with FakeWorld(8, tensors="real") as real:
        step(real, ep=4, force_balance=True)
        expected = real.collectives.ledger()
    with FakeWorld(8, tensors="fake") as plan:
        step(plan, ep=4, force_balance=False)  # the router's own topk, over fake scores
        assert plan.collectives.ledger() == expected
        assert BALANCED in plan.assumptions
    assert {op: row["calls"] for op, row in expected["ep"].items()} == {"all_to_all_single": 25}


@pytest.mark.parametrize("world_size", [4, 8])
def test_exact_ranks_plan_the_bytes_exact_ranks_send(world_size: int) -> None:
    """Every rank runs (values="exact"): each rank's count exchange carries
    its peers' counts (NOTE [Counts exchanged between exact ranks]), so the
    plan's per-rank bytes equal real tensors' with torchtitan's forced
    balance, the router's own topk assumed balanced."""
    with ExactWorld(world_size, tensors="real") as real:
        real.run(lambda: step(real, ep=4, force_balance=True))
        expected = real.collectives.ledger()
    with ExactWorld(world_size, tensors="fake") as plan:
        plan.run(lambda: step(plan, ep=4, force_balance=False))
        assert plan.collectives.ledger() == expected
    # 25 dispatches and combines on every rank (the EP group: the whole world at 4)
    assert sum(group.get("all_to_all_single", {}).get("calls", 0) for group in expected.values()) == 25 * world_size


def hot_expert(rows: int, n: int, k: int) -> torch.Tensor:
    """Expert 0 is every token's first choice; the others share the rest
    evenly (each row's k experts differ, as topk's do)."""
    rest = 1 + torch.arange(rows * (k - 1)).reshape(rows, k - 1) % (n - 1)
    return torch.cat([torch.zeros(rows, 1, dtype=torch.long), rest], dim=1)


def test_the_worst_case_a_hot_expert_costs_the_rank_that_holds_it() -> None:
    """Planning the worst case (world.route): with expert 0 taking every
    token's first choice, EP rank 0, which holds it, receives more tokens
    than balanced routing gives any rank, and the others fewer. A hot expert
    makes the EP ranks differ, so the plan runs the ranks of one EP group
    (exact along "ep", one rank standing for the rest): the way to plan it
    at any scale."""

    def peaks(routing) -> list[int]:
        with ExactWorld(mesh={"fsdp": 2, "ep": 4}, exact_dims="ep", tensors="fake") as plan:
            plan.route(routing)
            return plan.run(lambda: (step(plan, ep=4, force_balance=False, seq_len=256),
                                     plan.memory.at_peak["activations"])[1])

    balanced, hot = peaks(None), peaks(hot_expert)
    with FakeWorld(8, tensors="fake") as uniform:  # one rank standing for all
        step(uniform, ep=4, force_balance=False, seq_len=256)
        assert balanced == [uniform.memory.at_peak["activations"]] * 4
    assert hot[0] > balanced[0] > max(hot[1:])


@pytest.mark.fake_world(64, rank=63, tensors="fake")
def test_deepseek_v3_16b_with_ep_8_plans_at_64_ranks(fake_world, memory, collectives) -> None:
    """16B (64 routed experts, top 6) with EP 8 over FSDP 64, sequence 4,096:
    each of the 26 MoE layers dispatches and combines on the EP group, in
    forward and backward, with the counts exchanged first (int64); the rank
    holds its own experts only."""
    model = step(fake_world, ep=8, force_balance=False, seq_len=4096, flavor="16B")
    assert collectives.ledger()["ep"] == {
        "all_to_all_single": {"calls": 130, "bytes": 10_468_996_096, "dtypes": ["int64", "bfloat16"]},
    }
    assert BALANCED in fake_world.assumptions
    # 64 experts over EP 8 leave 8 to the rank's EP group, sharded by FSDP over
    # the 8 "efsdp" ranks: one expert's weights stay on this rank.
    experts = [p for name, p in model.named_parameters() if "routed_experts" in name]
    assert {p.device_mesh.mesh_dim_names for p in experts} == {("efsdp", "ep")}
    assert {p.to_local().shape[0] for p in experts} == {1}
    # At the peak: the shards, and what FSDP has gathered for the layers in
    # flight, with their 8 EP-local experts each (w1, w2, w3 of 1,408 x 2,048
    # in bf16: 138 MB a layer) - less than all 64 experts of one layer.
    shards = sum(p.to_local().numel() * p.element_size() for p in model.parameters())
    all_experts_of_a_layer = 64 * 3 * 1408 * 2048 * 2
    assert shards < memory.at_peak["parameters"] < shards + all_experts_of_a_layer
