"""torchtitan's own llama3 with context parallelism (CP), on CPU: the
sequence is sharded over the "cp" ranks and attention runs as torch's ring
attention. torch has the ring for the CUDA attention kernels only; the world
supplies it for the CPU one (NOTE [Context parallel on CPU]).

The checks: in an exact world the two CP ranks' losses add up to the loss of
the same weights on the whole sequence without CP; a plan on fake tensors
records, rank for rank, what exact ranks of real tensors record (with FSDP,
and with FSDP and TP); and Llama 3
8B with CP 8 x FSDP 128 at sequence 8,192 plans at 1,024 ranks.

torchtitan comes from .ci/clients.txt; without it this skips, saying so
(examples/torchtitan_on_cpu.py builds the model as the trainer does).
"""

import pytest
import torch
import torch.distributed as dist

from torchtitan_on_cpu import llama3, torchtitan_spmd_backend  # noqa: F401 - torchtitan on CPU, or a skip; the fixture

from torchtitan.components.loss import cross_entropy_loss
from torchtitan.distributed.context_parallel import prepare_context_parallel_input

from pytest_fakepg import ExactWorld, FakeWorld

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning")

GiB = 2**30


def cp_step(world: FakeWorld, flavor: str, seq_len: int, dp: int, cp: int, tp: int = 1,
            param_dtype: str = "bfloat16"):
    """One forward and backward of torchtitan's llama3 with CP as its trainer
    runs it: the batch sharded along the sequence (head-tail load balance),
    torchtitan's summed cross entropy. Returns the model, this rank's loss
    and the whole batch."""
    model, dims, config = llama3(world.world_size, flavor, seq_len, dp=dp, tp=tp, cp=cp, param_dtype=param_dtype)
    tokens = torch.randint(0, 1000, (1, seq_len + 1), generator=torch.Generator().manual_seed(1))
    inputs, labels = tokens[:, :-1], tokens[:, 1:]
    positions = torch.arange(seq_len)[None]
    world.collectives.clear()  # the step, not the sharding
    x, y, kwargs = prepare_context_parallel_input(inputs, labels, {"positions": positions}, dims.get_mesh("cp"),
                                                  torch.device("cpu"))
    loss = cross_entropy_loss(model(x, **kwargs), y)
    loss.backward()
    return model, config, loss, (inputs, labels, positions)


def cp_losses_and_unsharded_loss(world: ExactWorld) -> tuple[float, float, float, int]:
    """This rank's CP loss, the CP group's sum, the same weights' loss on
    the whole sequence without CP, and the model's layers."""
    model, config, loss, (inputs, labels, positions) = cp_step(world, "debugmodel", 64, dp=1, cp=2,
                                                               param_dtype="float32")
    weights = {name: value.full_tensor() if hasattr(value, "full_tensor") else value
               for name, value in model.state_dict().items()}
    total = loss.detach().clone()
    dist.all_reduce(total)
    with torch.device("meta"):
        whole = config.build()
    whole.to_empty(device="cpu")
    with torch.no_grad():
        whole.init_weights(buffer_device=None)  # the RoPE cache, which is not in the state dict
    whole.load_state_dict(weights)
    whole_loss = cross_entropy_loss(whole(inputs, positions=positions), labels)
    return loss.item(), total.item(), whole_loss.item(), len(config.layers)


def test_cp_losses_add_up_to_the_loss_without_cp() -> None:
    with ExactWorld(2) as world:
        (mine0, total0, whole0, layers), (mine1, total1, whole1, _) = world.run(
            lambda: cp_losses_and_unsharded_loss(world))
        # The ring's backward passes the key and value gradients on: one
        # all_to_all per layer and step (CP spans the world of 2 here).
        passes = sum(r.op == "all_to_all_single" for r in world.collectives if r.rank == 0)
    assert passes == 2 * layers
    assert total0 == total1 == pytest.approx(mine0 + mine1, rel=1e-6)
    assert whole0 == whole1
    assert total0 == pytest.approx(whole0, rel=1e-6)
    assert mine0 != pytest.approx(mine1, rel=1e-3)  # each rank's own half of the sequence


def records(world: FakeWorld, rank: int) -> list[tuple]:
    return [(r.op, r.group, r.shapes, r.dtype, r.reduce_op) for r in world.collectives if r.rank == rank]


@pytest.mark.parametrize(("dp", "tp"), [(2, 1), (2, 2)], ids=["cp2xdp2", "cp2xdp2xtp2"])
def test_a_cp_plan_records_what_exact_ranks_of_real_tensors_record(dp: int, tp: int) -> None:
    """CP 2 with FSDP (and TP): the exact world's ledger on real tensors, on
    fake tensors, and each rank's records in a uniform world of fake tensors."""
    n = 2 * dp * tp
    with ExactWorld(n) as real:
        real.run(lambda: cp_step(real, "debugmodel", 256, dp=dp, cp=2, tp=tp))
        expected = real.collectives.ledger()
        by_rank = {rank: records(real, rank) for rank in range(n)}
    with ExactWorld(n, tensors="fake") as plan:
        plan.run(lambda: cp_step(plan, "debugmodel", 256, dp=dp, cp=2, tp=tp))
        assert plan.collectives.ledger() == expected
    for rank in (0, n - 1):
        with FakeWorld(n, rank=rank, tensors="fake") as uniform:
            cp_step(uniform, "debugmodel", 256, dp=dp, cp=2, tp=tp)
            assert records(uniform, rank) == by_rank[rank]
    # a CP group of 2 for each of the other coordinates (the ledger names each
    # by its ranks), each running the ring
    rings = {group: set(row) for group, row in expected.items() if group.startswith("cp")}
    assert len(rings) == dp * tp
    assert set(map(frozenset, rings.values())) == {frozenset({"all_gather_into_tensor", "all_to_all_single"})}


@pytest.mark.fake_world(1024, rank=1023, tensors="fake")
def test_llama3_8b_with_cp_8_plans_sequence_8192_at_1024_ranks(fake_world, memory, collectives) -> None:
    """Each rank holds 1,024 of the 8,192 tokens. Per layer, forward gathers
    the CP group's keys and values once (bf16, 1,024 tokens x 8 KV heads x
    128 x 2 = 4 MiB in); backward gathers them again and passes the key and
    value gradients round the ring (fp32, 8 MiB at each of its 8 steps)."""
    cp_step(fake_world, "8B", 8192, dp=128, cp=8)
    ledger = collectives.ledger()
    assert ledger["cp"] == {
        "all_gather_into_tensor": {"calls": 64, "bytes": 64 * 4 * 2**20, "dtypes": ["bfloat16"]},
        "all_to_all_single": {"calls": 256, "bytes": 256 * 8 * 2**20, "dtypes": ["float32"]},
    }
    # FSDP over CP and data (the whole world): each block's bf16 shard gathered
    # in forward and backward, fp32 gradients reduce-scattered once.
    assert {op: row["calls"] for op, row in ledger["default_pg"].items()} == {
        "all_gather_into_tensor": 67, "reduce_scatter_tensor": 34,
    }
    assert memory.peak < 12 * GiB
    assert memory.at_peak["activations"] > 8 * memory.at_peak["gradients"]
