"""Generates the soak suite: many marked tests mixing world sizes, ranks,
meshes, value semantics, faults, failures and errors, plus a conftest that
checks every test starts on a pristine torch distributed state and records
outcomes and memory. Used by test_soak.py; see the README for the full run.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SIZES = [1, 2, 3, 4, 6, 8, 12, 16, 32, 64, 128, 256, 1024, 4096]

CONFTEST = '''
import json, os
import pytest

_state = {"violations": [], "outcomes": {}, "count": 0, "rss_after_100": None}
_BASE = {}  # traces() before the first test


def _rss_mb():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024


def _pristine():
    """What the tests before left behind: NOTE [Patches] and every registry
    a world touches, as ``_compat.state.traces`` reads them."""
    import torch.distributed  # its registries are read from the first test on
    from pytest_fakepg._compat.state import traces
    now = traces()
    base = _BASE or _BASE.update({k: v for k, v in now.items() if k not in ("environment", "threads")}) or _BASE
    problems = [f"{name}: {now[name]!r}, was {base[name]!r}" for name in base if now.get(name) != base[name]]
    problems += [f"{name} set" for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                                            "ROLE_RANK", "ROLE_NAME", "ROLE_WORLD_SIZE", "MASTER_ADDR", "SOAK_LEAK")
                 if name in now["environment"]]
    return problems


def pytest_runtest_logstart(nodeid, location):
    problems = _pristine()
    if problems:
        _state["violations"].append([nodeid, problems])


def pytest_runtest_logreport(report):
    name = report.nodeid.split("::")[-1].split("[")[0]
    if report.when == "setup" and report.failed:
        _state["outcomes"][name] = "error"
    elif report.when == "call":
        _state["outcomes"][name] = report.outcome
    elif report.when == "teardown" and report.failed:
        _state["outcomes"][name] = "error"


def pytest_runtest_logfinish(nodeid, location):
    _state["count"] += 1
    if _state["count"] == 100:
        _state["rss_after_100"] = _rss_mb()


def pytest_sessionfinish(session):
    _state["rss_end"] = _rss_mb()
    with open(os.environ["SOAK_OUT"], "w") as fh:
        json.dump(_state, fh)


@pytest.fixture
def broken():
    raise RuntimeError("this fixture breaks on purpose")
'''


def _mesh_for(rng: random.Random, size: int) -> tuple[str, object] | None:
    """A random 1-D to 3-D mesh covering `size` ranks, named or not."""
    dims = rng.choice([1, 2, 3])
    shape: list[int] = []
    rest = size
    for _ in range(dims - 1):
        divisors = [d for d in range(1, rest + 1) if rest % d == 0]
        d = rng.choice(divisors)
        shape.append(d)
        rest //= d
    shape.append(rest)
    if rng.random() < 0.5:
        names = ["pp", "dp", "tp"][-len(shape):]
        return "named", dict(zip(names, shape))
    return "unnamed", tuple(shape)


def make_test(i: int, rng: random.Random) -> tuple[str, str]:
    """One test's source and its expected outcome."""
    size = rng.choice(SIZES)
    rank = rng.randrange(size)
    if rng.random() < 0.2:
        rank -= size  # negative ranks count from the end
    values = rng.choice(["uniform", "copy"])
    mesh = _mesh_for(rng, size) if rng.random() < 0.6 else None
    fault = rng.choice([None, None, "nth", "wait"])
    outcome = rng.choices(["passed", "failed", "error"], weights=[8, 1, 1])[0]

    args = [str(size), f"rank={rank}", f"values={values!r}"]
    if mesh is not None:
        args.append(f"mesh={mesh[1]!r}")
    if fault == "nth":
        args.append("fail={'all_reduce': 2}")
    elif fault == "wait":
        args.append("fail='barrier', fail_at='wait'")
    params = "fake_world, broken" if outcome == "error" else "fake_world"
    n = size if values == "uniform" else 1
    body = [
        f"    assert (dist.get_world_size(), dist.get_rank()) == ({size}, {rank % size})",
        f"    assert (os.environ['WORLD_SIZE'], os.environ['RANK']) == ('{size}', '{rank % size}')",
        "    t = torch.ones(2)",
        "    dist.all_reduce(t)",
        f"    assert t.tolist() == [{float(n)}, {float(n)}]",
        "    os.environ.update(RANK='1', SOAK_LEAK='1')  # restored at teardown",
    ]
    if fault == "nth":
        body += [
            "    with pytest.raises(dist.DistBackendError, match='call 2 of all_reduce'):",
            "        dist.all_reduce(torch.ones(1))",
        ]
    elif fault == "wait":
        body += [
            "    work = dist.barrier(async_op=True)",
            "    with pytest.raises(dist.DistBackendError):",
            "        work.wait()",
        ]
    if mesh is not None:
        shape = list(mesh[1].values()) if mesh[0] == "named" else list(mesh[1])
        body += [
            f"    assert list(fake_world.mesh.shape) == {shape}",
            "    g = fake_world.mesh.get_group(fake_world.mesh.ndim - 1)",
            "    u = torch.ones(1)",
            "    dist.all_reduce(u, group=g)",
            f"    assert u.item() == {float(shape[-1] if values == 'uniform' else 1)}",
        ]
    if outcome == "failed":
        body.append("    assert False, 'fails on purpose'")
    source = f"\n@pytest.mark.fake_world({', '.join(args)})\ndef test_{i:05d}({params}):\n" + "\n".join(body) + "\n"
    return source, outcome


def generate(directory: Path, tests: int, seed: int) -> dict[str, str]:
    """Write the suite into `directory`; return test name -> expected outcome."""
    rng = random.Random(seed)
    expected: dict[str, str] = {}
    per_file = 500
    for f in range(0, tests, per_file):
        parts = ["import os, pytest, torch, torch.distributed as dist\n"]
        for i in range(f, min(f + per_file, tests)):
            source, outcome = make_test(i, rng)
            parts.append(source)
            expected[f"test_{i:05d}"] = outcome
        (directory / f"test_soak_{f // per_file:03d}.py").write_text("".join(parts))
    (directory / "conftest.py").write_text(CONFTEST)
    (directory / "expected.json").write_text(json.dumps(expected))
    return expected
