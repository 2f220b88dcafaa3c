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
_EXCEPTHOOK = __import__("sys").excepthook
_ORIGINALS = {}


def _originals(dist):
    """What a world patches while it is up, as torch had it."""
    if not _ORIGINALS:
        c10d = dist.distributed_c10d
        for name in ("broadcast_object_list", "scatter_object_list", "recv_object_list"):
            _ORIGINALS[name] = getattr(c10d, name)
        _ORIGINALS["seq"] = dist.ProcessGroup._get_sequence_number_for_group
    return _ORIGINALS


def _rss_mb():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024


def _pristine():
    import sys
    problems = []
    dist = sys.modules.get("torch.distributed")
    if dist is None:
        return problems
    if dist.is_initialized():
        problems.append("default group exists")
    world = dist.distributed_c10d._world
    if world.pg_map or world.pg_names or world.tags_to_pg:
        problems.append(f"{len(world.pg_map)} registered groups")
    for name in ("pg_group_ranks", "pg_backend_config", "pg_to_tag", "pg_coalesce_state"):
        if getattr(world, name, None):
            problems.append(f"_world.{name} not empty")
    if sys.excepthook is not _EXCEPTHOOK:
        problems.append("sys.excepthook replaced")
    originals = _originals(dist)
    for name in ("broadcast_object_list", "scatter_object_list", "recv_object_list"):
        if getattr(dist, name) is not originals[name] or getattr(dist.distributed_c10d, name) is not originals[name]:
            problems.append(f"torch.distributed.{name} replaced")
    if dist.ProcessGroup._get_sequence_number_for_group is not originals["seq"]:
        problems.append("ProcessGroup._get_sequence_number_for_group replaced")
    plugin = dist.Backend._plugins.get("FAKE")
    if plugin is not None and plugin.creator_fn.__module__.startswith("pytest_fakepg"):
        problems.append("backend 'fake' still served by fakepg")
    dm = sys.modules.get("torch.distributed.device_mesh")
    if dm is not None and dm._mesh_resources.mesh_stack:
        problems.append("mesh stack not empty")
    rnd = sys.modules.get("torch.distributed.tensor._random")
    if rnd is not None and rnd._rng_tracker is not None:
        problems.append("DTensor RNG tracker left")
    api = sys.modules.get("torch.distributed.tensor._api")
    if api is not None:
        prop = api.DTensor._op_dispatcher.sharding_propagator
        if prop.propagate_op_sharding.cache.cache_info().currsize:
            problems.append("DTensor sharding cache not empty")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "ROLE_NAME",
                 "ROLE_WORLD_SIZE", "MASTER_ADDR", "SOAK_LEAK"):
        if name in os.environ:
            problems.append(f"{name} set")
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
