"""The memory fixture's categories for module state made anew: a model built on
the meta device and brought to life with ``to_empty`` (alone or after FSDP2
sharded it there), a state dict assigned, and a module cast with its
gradients. Each counts by what it is from the moment it exists, with real and
fake tensors alike (NOTE [Module state made anew], _compat/tools.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn as nn
from torch.distributed.fsdp import fully_shard

from pytest_fakepg import FakeWorld

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

NOTHING = {"parameters": 0, "gradients": 0, "optimizer": 0, "activations": 0, "other": 0}
LINEAR_BYTES = (64 * 30 + 30) * 4  # nn.Linear(64, 30) in float32


def meta_then_to_empty(world: FakeWorld) -> nn.Module:
    with torch.device("meta"):
        model = nn.Linear(64, 30)
    return model.to_empty(device="cpu")


def assigned_state_dict(world: FakeWorld) -> nn.Module:
    with torch.device("meta"):
        model = nn.Linear(64, 30)
    model.load_state_dict({"weight": torch.ones(30, 64), "bias": torch.zeros(30)}, assign=True)
    return model


def fsdp2_on_meta_then_to_empty(world: FakeWorld) -> nn.Module:
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(64, 30), nn.Linear(30, 30))
    for layer in model:
        fully_shard(layer, mesh=world.mesh)
    fully_shard(model, mesh=world.mesh)
    return model.to_empty(device="cpu")


# FSDP2 on 4 ranks pads 30 rows to 32 and keeps 8 a rank, in one storage per parameter.
FSDP2_SHARD_BYTES = (8 * 64 + 8 + 8 * 30 + 8) * 4


@pytest.mark.parametrize(
    ("build", "param_bytes"),
    [(meta_then_to_empty, LINEAR_BYTES), (assigned_state_dict, LINEAR_BYTES),
     (fsdp2_on_meta_then_to_empty, FSDP2_SHARD_BYTES)],
    ids=["to_empty", "load_state_dict-assign", "fully_shard-to_empty"],
)
@pytest.mark.parametrize("tensors", ["real", "fake"])
def test_module_state_made_anew_counts_as_parameters(
    tensors: str, build: Callable[[FakeWorld], nn.Module], param_bytes: int
) -> None:
    with FakeWorld(mesh={"dp": 4}, tensors=tensors) as world:
        memory = world.memory
        model = build(world)
        assert memory.current == {**NOTHING, "parameters": param_bytes}
        assert memory.at_peak == {**NOTHING, "parameters": param_bytes}
        # and a step on: the categories the first forward used to correct stay
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        model(torch.ones(2, 64)).sum().backward()
        optimizer.step()
        assert memory.current["parameters"] == param_bytes
        assert memory.current["gradients"] == param_bytes


def test_a_cast_keeps_parameters_and_gradients_in_their_categories() -> None:
    # Real tensors only: torch cannot swap a fake parameter for its cast
    # ("_apply(): Couldn't swap Linear.weight"), with or without a world.
    with FakeWorld(2) as world:
        memory = world.memory
        model = nn.Linear(64, 30)
        model(torch.ones(2, 64)).sum().backward()
        model.half()
        assert model.weight.grad.dtype == torch.float16
        assert memory.current == {**NOTHING, "parameters": LINEAR_BYTES // 2, "gradients": LINEAR_BYTES // 2}


@pytest.mark.parametrize("build", [meta_then_to_empty, assigned_state_dict, fsdp2_on_meta_then_to_empty])
def test_real_and_fake_tensors_give_the_same_figures(build: Callable[[FakeWorld], nn.Module]) -> None:
    figures = {}
    for tensors in ("real", "fake"):
        with FakeWorld(mesh={"dp": 4}, tensors=tensors) as world:
            memory = world.memory
            build(world)
            figures[tensors] = (memory.peak, memory.at_peak, memory.current)
    assert figures["fake"] == figures["real"]


def test_an_fsdp2_and_tp_training_step_peaks_alike_on_real_and_fake_tensors() -> None:
    # DTensor works out each op's output shape on global-size tensors, under the
    # fake mode it finds active: in a fake-tensor world, the world's. Those are
    # not memory the step holds (NOTE [DTensor's scratch tensors]).
    from examples.llama import build, train_step

    figures = {}
    for tensors in ("real", "fake"):
        with FakeWorld(mesh={"dp": 2, "tp": 4}, tensors=tensors) as world:
            memory = world.memory
            model = build("debug", 64, world.mesh)
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
            memory.reset()
            train_step(model, optimizer, batch=1, seq_len=64)
            figures[tensors] = (memory.peak, memory.at_peak, memory.current)
    assert figures["fake"] == figures["real"]


@pytest.mark.parametrize("tensors", ["real", "fake"])
def test_a_module_that_shadows_its_methods_is_measured(tensors: str) -> None:
    """Megatron's DDP sets ``self.buffers = [...]``: torch's tracker called
    ``module.buffers()`` and failed ("'list' object is not callable")."""

    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.module = nn.Linear(4, 4)
            self.buffers = [torch.zeros(4)]  # type: ignore[assignment]
            self.parameters = None  # type: ignore[assignment]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.module(x)

    with FakeWorld(2, tensors=tensors) as world:
        memory = world.memory
        model = Wrapper()
        model(torch.ones(2, 4)).sum().backward()
        assert memory.current["parameters"] == 4 * 4 * 4 + 4 * 4
        assert memory.current["gradients"] == 4 * 4 * 4 + 4 * 4


@pytest.mark.parametrize("tensors", ["real", "fake"])
def test_casts_and_moves_keep_the_parameters_counted(tensors: str) -> None:
    """``half()``, ``to(dtype)`` and ``to(device)`` on fake parameters failed
    in torch ("Couldn't swap Linear.weight", NOTE [Casts of fake
    parameters]); their memory is the parameters' either way."""
    with FakeWorld(2, tensors=tensors) as world:
        memory = world.memory
        model = nn.Linear(64, 30)
        model.half()
        assert (model.weight.dtype, memory.current["parameters"]) == (torch.float16, LINEAR_BYTES // 2)
        model.to(torch.bfloat16).to("cpu")
        assert (model.bias.dtype, memory.current["parameters"]) == (torch.bfloat16, LINEAR_BYTES // 2)
        model.float()
        assert (model.weight.dtype, memory.current) == (torch.float32, {**NOTHING, "parameters": LINEAR_BYTES})
        model(torch.ones(2, 64)).sum().backward()
        assert model.weight.grad is not None and model.weight.grad.shape == (30, 64)


class _LibraryBuffers(nn.Module):
    """What DeepSpeed ZeRO-3 and Megatron's DDP and distributed optimizer do
    to a module's parameters: empty the parameter and keep its shard in
    ``param.ds_tensor`` (a view of a flat buffer), point ``param.main_grad``
    into a contiguous fp32 gradient buffer, hang the fp32 master shard on
    ``param.main_param``."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(0))
        self.flat = torch.empty(1024)  # the shards' flat buffer (4 KiB)
        self.weight.ds_tensor = self.flat[:512]
        self.grads = torch.zeros(2048)  # the gradient buffer (8 KiB)
        self.weight.main_grad = self.grads[:1024]
        self.weight.main_param = torch.empty(256)  # 1 KiB

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@pytest.mark.parametrize("tensors", ["real", "fake"])
def test_tensors_a_library_hangs_on_a_parameter_are_in_their_categories(tensors: str) -> None:
    """NOTE [Tensors hung on a parameter]: without it the shard counted as
    other, the gradient buffer as other, the master shard as other."""
    with FakeWorld(2, tensors=tensors) as world:
        memory = world.memory
        module = _LibraryBuffers()
        module(torch.empty(0))  # the tracker reads a module's parameters as it first runs
        assert memory.current == {**NOTHING, "parameters": 4096, "gradients": 8192, "optimizer": 1024}


@pytest.mark.parametrize("tensors", ["real", "fake"])
def test_a_parameter_that_is_not_a_leaf_is_measured(tensors: str) -> None:
    """FSDP1's views: torch refuses a post-accumulate hook on a non-leaf,
    which stopped the memory tracker at the module's first forward."""
    with FakeWorld(2, tensors=tensors) as world:
        memory = world.memory
        model = nn.Linear(8, 8)
        base = torch.zeros(8 * 8, requires_grad=True)
        model._parameters["weight"] = base.view(8, 8)  # a view: not a leaf
        model(torch.ones(2, 8)).sum().backward()
        assert base.grad is not None and memory.current["parameters"] >= 8 * 8 * 4
