"""--fake-world-real: fake-world tests run again on real gloo ranks (torchrun),
their ledgers compared with the fake world's (NOTE [Real ranks])."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pytest_fakepg.real import ledger

from .conftest import HEADER, RunTests

# Each real run starts torchrun and one Python per rank: a few seconds each
# on this machine's two cores, so the runs below share files where they can.
PASSING = """
import time
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module


@pytest.mark.fake_world([2, 4])
def test_uniform(rank, world_size, collectives):
    t = torch.ones(3)
    dist.all_reduce(t)
    assert t.tolist() == [float(world_size)] * 3
    assert [c.op for c in collectives] == ["all_reduce"]


@pytest.mark.fake_world(2, values="exact")
def test_exact_p2p(rank):
    t = torch.tensor([float(rank)])
    if rank == 0:
        dist.send(t + 10, 1)
    else:
        dist.recv(t, 0)
        assert t.item() == 10.0


@pytest.mark.fake_world(mesh={"tp": 2}, values="exact")
def test_tp_module(device_mesh, collectives):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8))
    parallelize_module(model, device_mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})
    model(torch.randn(4, 8)).sum().backward()
    # the weights scattered from rank 0 (the last bias replicated), the output all-reduced
    assert [c.op for c in collectives] == ["scatter", "scatter", "scatter", "broadcast", "all_reduce"]


@pytest.mark.fake_world(2, rank="all")
def test_sweep(rank):
    t = torch.full((2,), 3.0)
    dist.broadcast(t, 0)
    assert t.tolist() == [3.0, 3.0]


@pytest.mark.fake_world(2, tensors="fake")
def test_fake_tensors():
    dist.all_reduce(torch.ones(4))


@pytest.mark.fake_world(2, device="cuda")
def test_cuda():
    dist.all_reduce(torch.ones(4, device="cuda"))
"""


def test_passing_tests_pass_on_real_ranks_with_the_same_ledgers(run_tests: RunTests, pytester: pytest.Pytester) -> None:
    result = run_tests(PASSING, "--fake-world-real=gloo", "--fake-world-report-json=report.json", "-rs")
    result.assert_outcomes(passed=7, skipped=1)  # test_cuda: no CUDA device for its fake world
    real = json.loads((pytester.path / "report.json").read_text())["real"]
    ran = {nodeid.split("::")[1]: e for nodeid, e in real.items() if e["real"] != "skipped"}
    assert sorted(ran) == ["test_exact_p2p[w2-exact]", "test_sweep[w2-r0]", "test_tp_module[w2-tp2-exact]",
                           "test_uniform[w2-r0]", "test_uniform[w4-r0]"]
    for entry in ran.values():
        assert (entry["fake"], entry["real"], entry["ledgers"], entry["backend"]) == ("passed", "passed", "agree", "gloo")
    assert ran["test_uniform[w4-r0]"]["ranks"] == 4
    skipped = {nodeid.split("::")[1]: e["reason"] for nodeid, e in real.items() if e["real"] == "skipped"}
    assert skipped == {
        "test_sweep[w2-r1]": "its real run is the one of test_it.py::test_sweep[w2-r0], which covers every rank",
        "test_fake_tensors[w2-r0]": "a tensors='fake' world plans on tensors that hold no data: nothing to check on "
                                    "real ranks",
    }
    result.stdout.fnmatch_lines([
        "*= fake world tests on real gloo ranks =*",
        "test_it.py::test_exact_p2p?w2-exact?: fake passed, real passed on 2 ranks in * s, ledgers agree",
        "5 passed, 2 skipped on real ranks",
    ])


FAILING = """
import time


@pytest.mark.fake_world(2)
def test_fails_on_rank_1(rank):
    dist.barrier()
    assert dist.get_rank() == 0


@pytest.mark.fake_world(2)
def test_ledger_differs(rank):
    # A uniform world's all_reduce sums this rank's value world_size times;
    # real ranks sum what each holds: rank 0 sees 0 in the fake world, 1 for real.
    t = torch.tensor([float(dist.get_rank())])
    dist.all_reduce(t)
    if t.item() > 0:
        dist.barrier()


@pytest.mark.fake_world(2)
def test_hangs(rank):
    # Each rank waits to hear from the other first: a fake world answers
    # a recv at once, real ranks wait for each other forever.
    t = torch.zeros(2)
    dist.recv(t, 1 - dist.get_rank())
    dist.send(t, 1 - dist.get_rank())


@pytest.mark.fake_world(2, fail="all_reduce")
def test_fault_fires(fake_world, collectives):
    with pytest.raises(dist.DistBackendError, match="injected fault in all_reduce"):
        dist.all_reduce(torch.ones(2))
    fake_world.fail("broadcast", nth=1)
    with pytest.raises(dist.DistBackendError, match="injected fault in broadcast"):
        dist.broadcast(torch.ones(2), 0)
    dist.broadcast(torch.ones(2), 0)  # nth=1 fired once: this one is real
    assert [(c.op, c.failed) for c in collectives] == [("all_reduce", True), ("broadcast", True), ("broadcast", False)]
"""


def test_failures_on_real_ranks_name_the_rank(run_tests: RunTests) -> None:
    result = run_tests(FAILING, "--fake-world-real=gloo", "--fake-world-real-timeout=30")
    result.assert_outcomes(passed=1, failed=3)
    result.stdout.fnmatch_lines([
        "*_ test_fails_on_rank_1?w2-r0? _*",
        "on 2 real gloo ranks (torchrun, * s): rank 1 failed:",
        "*assert 1 == 0*",
    ])
    result.stdout.fnmatch_lines([
        "*_ test_ledger_differs?w2-r0? _*",
        "on 2 real gloo ranks (torchrun, * s): rank 0's ledger on real ranks differs from the fake world's at rank 0: "
        "the fake world issued 1 calls and the real ranks 2; call 2, only the real ranks issued: barrier on group "
        "default_pg (ranks 0, 1)",
    ])
    result.stdout.fnmatch_lines([
        "*_ test_hangs?w2-r0? _*",
        "on 2 real gloo ranks (torchrun, * s): the real run did not finish in 30 s (--fake-world-real-timeout); "
        "rank(s) 0, 1 never finished",
        "rank 0's output:",
        "*Timeout*",  # faulthandler's dump shows where each rank waits
    ])
    result.stdout.fnmatch_lines(["rank 1's output:", "*Timeout*", '*File "*test_it.py", line 27 in test_hangs*'])
    result.stdout.fnmatch_lines(["test_it.py::test_fault_fires?w2-r0?: fake passed, real passed on 2 ranks*"])
    # The rank that passed says nothing of itself.
    assert "rank 0 failed" not in result.stdout.str()


def test_under_torchrun_each_process_is_a_rank(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_it=HEADER + """
@pytest.mark.fake_world([2, 4])
def test_all_reduce(rank, collectives):
    t = torch.ones(2) * (dist.get_rank() + 1)
    dist.all_reduce(t)
    assert len(collectives) == 1


def test_unmarked():
    assert not dist.is_initialized()
""")
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "--tee=3",
         "-m", "pytest", "test_it.py", "--fake-world-real=env", "--fake-world-report", "-p", "no:randomly",
         "-p", "no:cacheprovider", "-rs", "-W", "ignore::FutureWarning"],
        cwd=pytester.path, env=env, capture_output=True, text=True, timeout=240, check=False)
    out = run.stdout
    assert run.returncode == 0, out + run.stderr
    for rank in (0, 1):
        lines = [line.split(":", 1)[1] for line in out.splitlines() if line.startswith(f"[default{rank}]:")]
        text = "\n".join(lines)
        assert "2 passed, 1 skipped" in text, text
        assert "its world has 4 ranks and this torchrun world WORLD_SIZE=2" in text, text
        # rank 0 prints the collectives report; rank 1 does not
        assert ("fake world collectives" in text) == (rank == 0), text


# -- the comparison alone ------------------------------------------------------------


def _trace(*calls: list[object]) -> dict[str, object]:
    groups = [[None, 0, "default_pg", "0"], [[0, 1], 0, "tp", "1"]]
    return {"rank": -1, "world_size": 4, "groups": groups, "calls": [list(c) for c in calls]}


def _call(group: int, op: str, shape: list[int], dtype: str = "float32", peer: int | None = None,
          object_call: bool = False) -> list[object]:
    return [group, op, [shape], dtype, "SUM" if op == "all_reduce" else None, peer, False, "t.py:1", object_call, None]


def test_ledgers_compare_group_op_shape_dtype_and_count() -> None:
    a = _trace(_call(0, "all_reduce", [4]), _call(1, "broadcast", [2], peer=0))
    assert ledger.first_difference(a, a) is None
    # a group's name is not compared (it depends on what ran before); its members are
    renamed = _trace(_call(0, "all_reduce", [4]), _call(1, "broadcast", [2], peer=0))
    renamed["groups"][1][3] = "7"  # type: ignore[index]
    assert ledger.first_difference(a, renamed) is None
    shape = _trace(_call(0, "all_reduce", [4]), _call(1, "broadcast", [3], peer=0))
    assert ledger.first_difference(a, shape) == (
        "call 2 differs: the fake world issued broadcast float32[2] from rank 0 on group tp (ranks 0, 1); "
        "the real ranks issued broadcast float32[3] from rank 0 on group tp (ranks 0, 1)")
    group = _trace(_call(0, "all_reduce", [4]), _call(0, "broadcast", [2], peer=0))
    assert "on group default_pg (ranks 0-3)" in str(ledger.first_difference(a, group))
    dtype = _trace(_call(0, "all_reduce", [4], dtype="bfloat16"), _call(1, "broadcast", [2], peer=0))
    assert "call 1 differs" in str(ledger.first_difference(a, dtype))
    fewer = _trace(_call(0, "all_reduce", [4]))
    assert ledger.first_difference(a, fewer) == (
        "the fake world issued 2 calls and the real ranks 1; call 2, only the fake world issued: broadcast "
        "float32[2] from rank 0 on group tp (ranks 0, 1)")
    # an object collective's sizes follow each rank's pickled objects
    objects = _trace(_call(0, "all_reduce", [4]), _call(1, "broadcast", [9], peer=0, object_call=True))
    assert ledger.first_difference(a, objects) is None
