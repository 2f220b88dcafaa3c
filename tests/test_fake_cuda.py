"""A fake CUDA device (NOTE [A fake CUDA device], fake/cuda.py): a
tensors="fake" world with device="cuda" on a machine without a GPU serves
torch.cuda's API, so training code written for GPUs plans unchanged; when
the world goes down torch.cuda is the CPU build's again."""

from __future__ import annotations

import os
import threading

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.fsdp import fully_shard

from pytest_fakepg import ExactWorld, FakeWorld

pytestmark = pytest.mark.skipif(torch.cuda.is_available(),
                                reason="the fake CUDA device serves machines without a GPU; this one has one")


# Backward on the fake device needs a CPU build of torch: a CUDA build with no
# GPU asks the CUDA runtime for each device's context as backward starts.
cpu_build = pytest.mark.skipif(torch.version.cuda is not None,
                               reason="backward on the fake CUDA device needs a CPU build of torch")


@pytest.fixture
def world():
    with FakeWorld(16, rank=11, tensors="fake", device="cuda") as w:
        yield w


def test_devices_are_the_nodes_and_current_per_thread(world) -> None:
    assert torch.cuda.is_available() and torch.cuda.device_count() == 8  # LOCAL_WORLD_SIZE
    assert torch.cuda.current_device() == 0  # as in a fresh process
    torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    assert torch.cuda.current_device() == 3
    seen = []
    thread = threading.Thread(target=lambda: seen.append(torch.cuda.current_device()))
    thread.start()
    thread.join()
    assert seen == [0]  # CUDA's current device is per thread
    with torch.cuda.device(5):
        assert torch.cuda.current_device() == 5
    assert torch.cuda.current_device() == 3
    with pytest.raises(RuntimeError, match="invalid device ordinal 8"):
        torch.cuda.set_device(8)


def test_streams_events_and_rng_keep_their_types_and_states(world) -> None:
    stream = torch.cuda.Stream()
    assert isinstance(stream, torch.cuda.Stream) and isinstance(torch.cuda.current_stream(), torch.cuda.Stream)
    with torch.cuda.stream(stream):
        stream.wait_stream(torch.cuda.current_stream())
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    end.record()
    torch.cuda.synchronize()
    assert end.query() and start.elapsed_time(end) == 0.0
    state = torch.cuda.get_rng_state()
    torch.cuda.manual_seed(1234)
    assert not torch.equal(torch.cuda.get_rng_state(), state)
    torch.cuda.set_rng_state(state)
    assert torch.equal(torch.cuda.get_rng_state(), state)


@cpu_build
def test_tensors_and_modules_on_cuda_run_forward_and_backward(world) -> None:
    model = nn.Linear(64, 64).cuda()
    x = torch.empty(4, 64, device=torch.cuda.current_device())  # an index: "the current accelerator's"
    model(x).sum().backward()
    assert model.weight.type() == "torch.cuda.FloatTensor" and model.weight.is_cuda
    assert model.weight.grad.device == torch.device("cuda", 0) and model.weight.grad.get_device() == 0
    assert torch.tensor([1.0], device="cuda").device.type == "cuda"
    assert x.to(0).device == torch.device("cuda", 0) and x.half().cuda().type() == "torch.cuda.HalfTensor"


def test_memory_calls_answer_from_the_plan(world) -> None:
    world.memory.reset()
    weight = torch.empty(1024, 1024, device="cuda")  # 4 MiB
    assert torch.cuda.memory_allocated() == sum(world.memory.current.values()) >= 4 * 2**20
    assert torch.cuda.max_memory_allocated() == world.memory.peak
    assert torch.cuda.memory_stats()["allocated_bytes.all.current"] == torch.cuda.memory_allocated()
    free, total = torch.cuda.mem_get_info()
    assert total == torch.cuda.get_device_properties(0).total_memory == 80 * 2**30
    assert free == total - torch.cuda.memory_allocated()
    del weight


@cpu_build
def test_fsdp2_on_a_cuda_mesh_plans(world) -> None:
    mesh = dist.device_mesh.init_device_mesh("cuda", (16,))
    model = nn.Sequential(nn.Linear(256, 256), nn.Linear(256, 256)).cuda()
    for layer in model:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    model(torch.randn(8, 256, device="cuda")).sum().backward()
    assert world.collectives.count("all_gather_into_tensor") >= 2
    assert world.collectives.count("reduce_scatter_tensor") == 2


def test_a_value_read_through_torch_tensor_says_so(world) -> None:
    norms = [torch.randn(3, device="cuda").norm()]
    with pytest.raises(RuntimeError, match=r"tensor\(\) of fake tensors needs their values at test_fake_cuda.py"):
        torch.tensor(norms)


@cpu_build
def test_each_exact_rank_sets_its_own_device() -> None:
    with ExactWorld(4, tensors="fake", device="cuda") as world:
        def program():
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
            model = nn.Linear(8, 8).cuda()
            model(torch.randn(2, 8, device="cuda")).sum().backward()
            return torch.cuda.current_device(), model.weight.grad.device.index

        assert world.run(program) == [(0, 0), (1, 1), (2, 2), (3, 3)]


def test_after_the_world_torch_cuda_is_the_cpu_builds_again() -> None:
    to = torch.Tensor.to
    with FakeWorld(2, tensors="fake", device="cuda"):
        assert torch.cuda.is_available()
    assert not torch.cuda.is_available() and torch.cuda.device_count() == 0
    assert torch.Tensor.to is to and "type" not in vars(torch.Tensor)
    with pytest.raises(RuntimeError):
        torch.cuda.Stream()


def test_real_tensors_on_cuda_without_a_gpu_still_skip(run_tests) -> None:
    result = run_tests("""
@pytest.mark.fake_world(2, device="cuda")
def test_real():
    pass

@pytest.mark.fake_world(2, device="cuda", tensors="fake")
def test_fake():
    assert torch.cuda.is_available()
""", "-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*needs a cuda device; none is available*"])
