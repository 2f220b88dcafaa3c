"""Megatron-core as its users run it, in fake worlds: docs/megatron.md.

``parallel_state.initialize_model_parallel`` makes its groups in the world
(the gloo ones too, served by the world's backend), each rank of an exact
world keeps its own ``parallel_state``, and on fake tensors Megatron's CUDA
code runs on a fake CUDA device: a GPT with TP 8 x DP 128 at 1,024 ranks
plans forward, backward and ``finalize_model_grads`` on a machine without a
GPU. megatron-core is not in .ci/clients.txt (its metadata asks for Python
3.12; ../shared/CLIENTS.md says how to install it); without it these tests
skip, saying so.
"""

import importlib.util
import os
import sys
import types
import warnings

import pytest
import torch

from pytest_fakepg import ExactWorld

# megatron-core imports triton in one module its CPU paths never call.
_STASH = "megatron.core.transformer.moe.ops.paged_stash"
if _STASH not in sys.modules and importlib.util.find_spec("megatron") is not None:
    stub = types.ModuleType(_STASH)
    stub.__getattr__ = lambda name: None
    sys.modules[_STASH] = stub

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    pytest.importorskip("megatron.core", reason="megatron-core is not installed (see ../shared/CLIENTS.md)")
    from megatron.core import parallel_state as ps
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.distributed import finalize_model_grads
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.models.gpt.gpt_model import GPTModel
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed
    from megatron.core.transformer.module import Float16Module
    from megatron.core.transformer.transformer_config import TransformerConfig

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning")


def gpt(tp: int, **config) -> GPTModel:
    cfg = TransformerConfig(num_layers=2, hidden_size=64, num_attention_heads=4, tensor_model_parallel_size=tp,
                            pipeline_dtype=torch.float32, gradient_accumulation_fusion=False, **config)
    return GPTModel(config=cfg, transformer_layer_spec=get_gpt_layer_local_spec(), vocab_size=128,
                    max_sequence_length=16)


def tokens():
    g = torch.Generator().manual_seed(1)
    t = torch.randint(0, 128, (2, 16), generator=g)
    return t, torch.arange(16).unsqueeze(0).expand(2, 16), torch.ones(2, 1, 16, 16, dtype=torch.bool).tril().logical_not()


def loss_of(tp: int) -> float:
    """One forward and backward of a 2-layer GPT, as a Megatron user writes it."""
    ps.initialize_model_parallel(tensor_model_parallel_size=tp)
    model_parallel_cuda_manual_seed(123, inference_rng_tracker=True)
    torch.manual_seed(0)
    model = gpt(tp, use_cpu_initialization=True, bias_activation_fusion=False, masked_softmax_fusion=False,
                bias_dropout_fusion=False, apply_rope_fusion=False, persist_layer_norm=False, hidden_dropout=0.0,
                attention_dropout=0.0)
    t, pos, mask = tokens()
    loss = model(t, pos, mask, labels=t).float().mean()
    loss.backward()
    ps.destroy_model_parallel()
    return loss.item()


@pytest.fixture
def cpu_scratch(monkeypatch):
    """Megatron's local attention takes its scratch buffer on
    torch.cuda.current_device(): on a CPU-only torch, the CPU."""
    monkeypatch.setattr(torch.cuda, "current_device", lambda: "cpu")


def test_tp2_x_dp2_computes_the_one_process_loss(cpu_scratch):
    """Every rank initialises Megatron, builds the GPT, runs forward and
    backward and destroys its groups, unchanged: each rank's loss is the one
    process's, within float32 rounding."""
    with ExactWorld(1) as world:
        (expected,) = world.run(loss_of, 1)
    with ExactWorld(4) as world:
        losses = world.run(loss_of, 2)
    assert losses == pytest.approx([expected] * 4, abs=5e-7)
    assert losses[0] == losses[1]  # a tensor-parallel pair agrees bit for bit


@pytest.mark.fake_world(8, rank=[0, 7])
def test_tp2_x_pp2_on_the_first_and_the_last_stage(rank):
    """Its defaults make a gloo group beside each group, served by the
    world at once; rank 7 of TP 2 x PP 2 x DP 2 is the last stage."""
    ps.initialize_model_parallel(tensor_model_parallel_size=2, pipeline_model_parallel_size=2)
    assert (ps.get_tensor_model_parallel_world_size(), ps.get_pipeline_model_parallel_world_size(),
            ps.get_data_parallel_world_size()) == (2, 2, 2)
    assert (ps.is_pipeline_first_stage(), ps.is_pipeline_last_stage()) == (rank == 0, rank == 7)
    assert ps.get_data_parallel_group_gloo() is not None
    ps.destroy_model_parallel()


@pytest.mark.fake_world(1024, rank=0, tensors="fake", device="cuda")
def test_a_gpt_plan_at_1024_ranks_on_a_fake_cuda_device(memory, collectives, fake_world):
    """TP 8 x DP 128, DDP with the distributed optimizer, forward, backward
    and finalize_model_grads: Megatron's own CUDA code, on fake tensors,
    with torch.cuda served by the world. The gradient buffer its parameters'
    main_grad point into counts as gradients, the fp32 master shards as
    optimizer state."""
    torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    ps.initialize_model_parallel(tensor_model_parallel_size=8)
    model_parallel_cuda_manual_seed(123)
    cfg = TransformerConfig(num_layers=2, hidden_size=1024, num_attention_heads=16, tensor_model_parallel_size=8,
                            bf16=True, params_dtype=torch.bfloat16, pipeline_dtype=torch.bfloat16,
                            gradient_accumulation_fusion=False)
    model = Float16Module(cfg, GPTModel(config=cfg, transformer_layer_spec=get_gpt_layer_local_spec(),
                                        vocab_size=32000, max_sequence_length=2048).cuda())
    model = DistributedDataParallel(cfg, DistributedDataParallelConfig(use_distributed_optimizer=True,
                                                                       grad_reduce_in_fp32=True), model)
    get_megatron_optimizer(OptimizerConfig(optimizer="adam", lr=1e-4, bf16=True, use_distributed_optimizer=True), [model])
    cfg.finalize_model_grads_func = finalize_model_grads

    def batches():
        while True:
            t = torch.randint(0, 32000, (1, 2048), device="cuda")
            yield t, torch.arange(2048, device="cuda").unsqueeze(0), torch.ones(1, 1, 2048, 2048, dtype=torch.bool,
                                                                                 device="cuda")

    def step(data, m):
        t, pos, mask = next(data)
        return m(t, pos, mask, labels=t), lambda out: (out.float().mean(), {})

    get_forward_backward_func()(forward_step_func=step, data_iterator=batches(), model=[model], num_microbatches=1,
                                seq_length=2048, micro_batch_size=1, forward_only=False)
    grads = sum(p.main_grad.numel() for p in model.parameters()) * 4  # fp32, views of one buffer
    assert memory.current["gradients"] >= grads
    assert collectives.count("reduce_scatter_tensor") >= 1  # the distributed optimizer's gradient reduce
    assert torch.cuda.max_memory_allocated() == memory.peak
    ps.destroy_model_parallel()
