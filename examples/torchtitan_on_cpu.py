"""What torchtitan's examples need to import it on a CPU-only machine: a
stand-in for the expert-parallel kernels module, which imports triton (a
CPU torch has none; the examples never call its kernels), and a skip, saying
so, where torchtitan is not installed (``pip install --no-deps -r
.ci/clients.txt``). Import it before torchtitan.

``torchtitan_spmd_backend``, a fixture to import into each torchtitan test
module, puts back the SPMD backend torchtitan keeps in a module global.
``llama3`` builds torchtitan's llama3 as its trainer does, for the llama3
examples: SDPA attention in place of flex attention (which needs block
masks), the CPU device type, and the "partial_dtensor" backend (torchtitan
0.3.0's default "spmd_types" path refuses its own plain norm weights under
FSDP2, with real tensors too)."""

import dataclasses
import sys
import types
import warnings

import pytest
import torch

_KERNELS = "torchtitan.distributed.minimal_async_ep.kernels"
if _KERNELS not in sys.modules:
    stub = types.ModuleType(_KERNELS)
    stub.__getattr__ = lambda name: None
    sys.modules[_KERNELS] = stub

with warnings.catch_warnings():  # torch.jit's deprecation, met on torchtitan's imports
    warnings.simplefilter("ignore", DeprecationWarning)
    pytest.importorskip("torchtitan", reason="torchtitan is not installed (pip install --no-deps -r .ci/clients.txt)")

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import torchtitan.distributed.parallel_dims as parallel_dims_module
    import torchtitan.distributed.utils as dist_utils
    from torchtitan.config import CompileConfig, ParallelismConfig, TrainingConfig
    from torchtitan.distributed import ParallelDims
    from torchtitan.models.common.attention import ScaledDotProductAttention
    from torchtitan.models.llama3 import model_registry
    from torchtitan.models.llama3.sharding import set_llama3_sharding_config


@pytest.fixture(autouse=True)
def torchtitan_spmd_backend():
    """torchtitan keeps its SPMD backend in a module global, which its
    trainer (and ``llama3`` here) sets; put it back after each test."""
    before = dist_utils.get_spmd_backend()
    yield
    dist_utils.set_spmd_backend(before)


def llama3(world_size: int, flavor: str, seq_len: int, dp: int, tp: int = 1, cp: int = 1,
           param_dtype: str = "bfloat16") -> tuple[torch.nn.Module, ParallelDims, object]:
    """torchtitan's llama3 `flavor` as its trainer builds it: meta ->
    parallelize_llama -> to_empty -> init_weights. Returns the model, its
    ParallelDims and its config."""
    parallel_dims_module.device_type = "cpu"
    spec = model_registry(flavor)
    config = spec.model
    for layer in config.layers:
        layer.attention.inner_attention = ScaledDotProductAttention.Config()
        # What the trainer's update_from_config does (it imports the trainer's
        # dataset stack): each layer's RoPE cache sized to the run's sequence.
        layer.attention.rope = dataclasses.replace(layer.attention.rope, max_seq_len=seq_len)
    parallelism = ParallelismConfig(data_parallel_shard_degree=dp, tensor_parallel_degree=tp,
                                    context_parallel_degree=cp, spmd_backend="partial_dtensor")
    dist_utils.set_spmd_backend(parallelism.spmd_backend)  # as the trainer does
    set_llama3_sharding_config(config, enable_sp=parallelism.enable_sequence_parallel)
    dims = ParallelDims.from_config(parallelism, world_size)
    dims.build_mesh()
    with torch.device("meta"):
        model = config.build()
    training = TrainingConfig(seq_len=seq_len, local_batch_size=1, mixed_precision_param=param_dtype)
    model = spec.parallelize_fn(model, parallel_dims=dims, training=training, parallelism=parallelism,
                                compile_config=CompileConfig(), ac_config=None, dump_folder="/tmp")
    model.to_empty(device="cpu")
    with torch.no_grad():
        model.init_weights(buffer_device=None)
    return model, dims, config
