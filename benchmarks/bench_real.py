"""What a real run costs next to the fake one (``--fake-world-real=gloo``).

Four tests - a trivial all_reduce at world 2 and at world 4, a TP MLP (world
2, exact) and an FSDP2 step (world 2, exact) - run twice in one command:
fake only, then with their real runs. Each test's fake time is its duration
in the first run (JUnit XML); its real time is the real run's wall time as
the report gives it (torchrun, one process per rank, rendezvous, both runs
of the body per rank).

    python benchmarks/bench_real.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

TESTS = '''
import pytest, torch, torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module


@pytest.mark.fake_world([2, 4])
def test_trivial(rank):
    t = torch.ones(4)
    dist.all_reduce(t)


@pytest.mark.fake_world(mesh={"tp": 2}, values="exact")
def test_tp_mlp(device_mesh):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 64))
    parallelize_module(model, device_mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})
    model(torch.randn(16, 64)).sum().backward()


@pytest.mark.fake_world(2, values="exact")
def test_fsdp2_step(device_mesh):
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(64, 64) for _ in range(4)])
    for layer in model:
        fully_shard(layer, mesh=device_mesh)
    fully_shard(model, mesh=device_mesh)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(16, 64)).sum().backward()
    optimizer.step()
'''


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "test_bench.py"), "w") as fh:
            fh.write(TESTS)
        base = [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
                "-W", "ignore::FutureWarning", "test_bench.py"]
        subprocess.run([*base, "--junitxml=fake.xml"], cwd=tmp, check=True, capture_output=True)
        subprocess.run([*base, "--fake-world-real=gloo", "--fake-world-report-json=real.json"], cwd=tmp,
                       check=True, capture_output=True)
        fake = {case.get("name"): float(case.get("time", 0))
                for case in ET.parse(os.path.join(tmp, "fake.xml")).getroot().iter("testcase")}
        with open(os.path.join(tmp, "real.json")) as fh:
            real = json.load(fh)["real"]
    print(f"{'test':<32}{'fake s':>10}{'real s':>10}{'real/fake':>11}  ledgers")
    for nodeid, entry in sorted(real.items()):
        name = nodeid.split("::")[1]
        f = fake[name]
        print(f"{name:<32}{f:>10.3f}{entry['seconds']:>10.1f}{entry['seconds'] / f:>10.0f}x  {entry['ledgers']}")


if __name__ == "__main__":
    main()
