"""The pytest plugin's contract, run in subprocesses (torch's distributed
state is per process): marker forms, ids, fixtures, options, report, hooks,
errors and teardown."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from .conftest import RunTests

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")



def test_marker_on_function_brings_up_world_without_fixtures(run_tests: RunTests) -> None:
    result = run_tests("""
@pytest.mark.fake_world(4, rank=0)
def test_all_reduce():
    t = torch.ones(3, 3)
    dist.all_reduce(t)
    assert torch.equal(t, torch.full((3, 3), 4.0))
    assert dist.get_backend() == "fakepg"
""", "-v")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*test_all_reduce[[]w4-r0[]] PASSED*"])


def test_sweep_counts_and_ids(pytester: pytest.Pytester, run_tests: RunTests) -> None:
    result = run_tests("""
@pytest.mark.fake_world([2, 8], rank="all")
def test_sweep(rank, world_size):
    assert (dist.get_rank(), dist.get_world_size()) == (rank, world_size)

@pytest.mark.fake_world(mesh=[{"dp": 2, "tp": 4}, (2, 2)], rank=[0, -1])
def test_meshes(device_mesh, world_size):
    assert device_mesh.size() == world_size
""", "--collect-only", "-q")
    lines = [line for line in result.stdout.lines if "::" in line]
    assert lines == [f"test_it.py::test_sweep[w2-r{r}]" for r in range(2)] + [
        f"test_it.py::test_sweep[w8-r{r}]" for r in range(8)
    ] + [
        "test_it.py::test_meshes[w8-dp2xtp4-r0]",
        "test_it.py::test_meshes[w8-dp2xtp4-r7]",
        "test_it.py::test_meshes[w4-2x2-r0]",
        "test_it.py::test_meshes[w4-2x2-r3]",
    ]
    pytester.runpytest_subprocess("-W", "ignore::FutureWarning").assert_outcomes(passed=14)


def test_a_pinned_id_names_the_world_and_keeps_the_rank(run_tests: RunTests) -> None:
    """NOTE [Pinned case ids]"""
    result = run_tests("""
@pytest.mark.fake_world(mesh={"dp": 4, "tp": 2}, id="plan")
def test_one(world_size):
    assert world_size == 8

@pytest.mark.fake_world(4, rank="all", id="plan")
def test_sweep(rank):
    assert dist.get_rank() == rank

@pytest.mark.fake_world(4, values="exact", id="plan")
def test_exact(rank):
    pass
""", "-v")
    result.assert_outcomes(passed=6)
    lines = [line.split(" ")[0] for line in result.stdout.lines if " PASSED" in line]
    assert lines == ["test_it.py::test_one[plan]"] + [f"test_it.py::test_sweep[plan-r{r}]" for r in range(4)] + [
        "test_it.py::test_exact[plan]"]


def test_marker_on_class_module_and_closest_wins(run_tests: RunTests) -> None:
    result = run_tests("""
pytestmark = pytest.mark.fake_world(3)

def test_module_level(world_size):
    assert world_size == 3 == dist.get_world_size()

@pytest.mark.fake_world(5, rank=4)
class TestClass:
    def test_class_level(self):
        assert dist.get_world_size() == 5 and dist.get_rank() == 4

    @pytest.mark.fake_world(7)
    def test_closest(self):
        assert dist.get_world_size() == 7 and dist.get_rank() == 0
""")
    result.assert_outcomes(passed=3)


def test_unittest_testcase_methods_and_classes(run_tests: RunTests) -> None:
    result = run_tests("""
import unittest

@pytest.mark.fake_world(4, rank=2)
class TestOld(unittest.TestCase):
    def test_class_marker(self):
        self.assertEqual(dist.get_rank(), 2)
        t = torch.ones(1)
        dist.all_reduce(t)
        self.assertEqual(t.item(), 4.0)

    @pytest.mark.fake_world(mesh={"dp": 2, "tp": 3})
    def test_method_marker(self):
        self.assertEqual(dist.get_world_size(), 6)

class TestSweep(unittest.TestCase):
    @pytest.mark.fake_world([2, 4])
    def test_cannot_sweep(self):
        pass

class TestAfter(unittest.TestCase):
    def test_clean(self):
        self.assertFalse(dist.is_initialized())
""")
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines([
        "this test cannot be parametrized by the marker*",
        "*ERROR test_it.py::TestSweep::test_cannot_sweep - Failed: this test cannot be*",
    ])


def test_fixtures_without_marker_get_default_world(pytester: pytest.Pytester, run_tests: RunTests) -> None:
    pytester.makeini("[pytest]\nfake_world_size = 3\n")
    result = run_tests("""
def test_fixtures(fake_world, rank, world_size, device_mesh, fake_store, collectives):
    assert (rank, world_size) == (0, 3)
    assert fake_world.world_size == 3 and device_mesh.mesh.tolist() == [0, 1, 2]
    fake_store.set("k", "v")
    dist.barrier()
    assert collectives.ops == ["barrier"]

@pytest.mark.parametrize("world_size", [2, 5])
@pytest.mark.parametrize("rank", [1])
def test_parametrize_drives_world(fake_world, world_size, rank):
    assert (dist.get_world_size(), dist.get_rank()) == (world_size, 1)

@pytest.mark.fake_world(mesh={"dp": 2, "tp": -1})
@pytest.mark.parametrize("world_size", [4, 6])
def test_parametrize_with_marker(world_size, device_mesh):
    assert dist.get_world_size() == world_size
    assert device_mesh["tp"].size() == world_size // 2

def test_plain():
    assert not dist.is_initialized()
""")
    result.assert_outcomes(passed=6)


def test_fixtures_asked_for_late_and_after_a_session_run_inside_the_test(run_tests: RunTests) -> None:
    # The fixtures find their test without taking `request`; a pytest session
    # run inside a test (pytester, in process) must not make them lose it.
    result = run_tests("""
pytest_plugins = ["pytester"]

@pytest.mark.fake_world(3, rank=2)
def test_nested(request, pytester):
    pytester.makepyfile(test_inner="def test_inner():\\n    pass\\n")
    pytester.runpytest_inprocess("-p", "no:randomly", "-p", "no:cacheprovider").assert_outcomes(passed=1)
    assert request.getfixturevalue("rank") == 2
    assert request.getfixturevalue("fake_world").world_size == 3

def test_unmarked_asks_in_its_body(request):
    assert not dist.is_initialized()
    assert request.getfixturevalue("world_size") == 2
    assert dist.get_world_size() == 2
""")
    result.assert_outcomes(passed=2)


def test_collective_log_fixture_counts(run_tests: RunTests) -> None:
    result = run_tests("""
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net1 = torch.nn.Linear(16, 32)
        self.net2 = torch.nn.Linear(32, 16)
    def forward(self, x):
        return self.net2(torch.relu(self.net1(x)))

@pytest.mark.fake_world(mesh={"dp": 2, "tp": 4})
def test_tp_plan(device_mesh, collectives):
    model = parallelize_module(MLP(), device_mesh["tp"], {"net1": ColwiseParallel(), "net2": RowwiseParallel()})
    # parameters are sharded from tp rank 0: 3 scatters (2 weights, 1 bias) and a broadcast
    assert collectives.ops == ["scatter"] * 3 + ["broadcast"]
    collectives.clear()
    model(torch.randn(4, 16, requires_grad=True)).sum().backward()
    # forward: the row-wise output; backward: the column-wise input gradient
    assert collectives.ops == ["all_reduce", "all_reduce"]
    assert {(r.group_size, tuple(r.ranks)) for r in collectives} == {(4, (0, 1, 2, 3))}
""")
    result.assert_outcomes(passed=1)


def test_fault_marker(run_tests: RunTests) -> None:
    result = run_tests("""
@pytest.mark.fake_world(8, fail={"all_gather_into_tensor": 3})
def test_third_call_raises(fake_world):
    out = torch.empty(8)
    for _ in range(2):
        dist.all_gather_into_tensor(out, torch.ones(1))
    with pytest.raises(dist.DistBackendError, match="call 3 of all_gather_into_tensor"):
        dist.all_gather_into_tensor(out, torch.ones(1))
    dist.all_gather_into_tensor(out, torch.ones(1))

@pytest.mark.fake_world(2, fail=True, fail_at="wait")
def test_at_wait():
    work = dist.barrier(async_op=True)
    with pytest.raises(dist.DistBackendError):
        work.wait()
""")
    result.assert_outcomes(passed=2)


def test_teardown_after_failing_and_erroring_tests(run_tests: RunTests) -> None:
    result = run_tests("""
@pytest.fixture
def broken():
    raise RuntimeError("fixture broke")

@pytest.mark.fake_world(4, mesh={"dp": 2, "tp": 2})
def test_fails():
    assert False

@pytest.mark.fake_world(4)
def test_errors(broken):
    pass

def test_next_is_clean():
    from pytest_fakepg._compat.state import traces
    left = traces()
    assert not left["default group"] and not any(left["groups"].values()) and not left["mesh stack"]
""")
    result.assert_outcomes(passed=1, failed=1, errors=1)


def test_leaked_process_group_warns_then_strict_errors(run_tests: RunTests) -> None:
    source = """
def test_leaks():
    import torch.testing._internal.distributed.fake_pg  # registers "fake"
    dist.init_process_group("fake", rank=0, world_size=2, store=dist.HashStore())

@pytest.mark.fake_world(2)
def test_next_gets_world():
    assert dist.get_backend() == "fakepg"
"""
    result = run_tests(source)
    result.assert_outcomes(passed=2, warnings=1)
    result.stdout.fnmatch_lines([  # at the test's line, not the plugin's
        "*/test_it.py:3: FakeWorldLeakWarning: test_it.py::test_leaks left a default process group behind (backend 'fake', world size 2)*"
    ])
    result = run_tests(source, "--fake-world-strict")
    result.assert_outcomes(passed=2, errors=1)
    # the warning's class is importable where -W looks for it
    result = run_tests(source, "-W", "error::pytest_fakepg.FakeWorldLeakWarning")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*FakeWorldLeakWarning: test_it.py::test_leaks left a default process group*"])


def test_backend_option_runs_everything_on_stock_backend(run_tests: RunTests) -> None:
    result = run_tests("""
@pytest.mark.fake_world(2)
def test_copy_values():
    t = torch.ones(1)
    dist.all_reduce(t)
    assert dist.get_backend() == "fake" and t.item() == 1.0

@pytest.mark.fake_world(2, values="uniform")
def test_explicit_uniform_refused():
    pass
""", "--fake-world-backend=fake")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*values='uniform' needs the fakepg backend*"])


def test_ranks_option_sweeps_marked_tests_that_name_no_rank(run_tests: RunTests) -> None:
    result = run_tests("""
import unittest

@pytest.mark.fake_world(4)
def test_swept(rank):
    assert dist.get_rank() == rank

@pytest.mark.fake_world(4, rank=1)
def test_names_its_rank(rank):
    assert rank == 1

@pytest.mark.fake_world(4, rank=[0, 3])
def test_names_its_ranks(rank):
    assert rank in (0, 3)

@pytest.mark.fake_world(4)
class TestOld(unittest.TestCase):
    def test_one_rank(self):
        self.assertEqual(dist.get_rank(), 0)
""", "--fake-world-ranks=all", "-v")
    result.assert_outcomes(passed=4 + 1 + 2 + 1, warnings=1)
    result.stdout.fnmatch_lines([
        "*test_swept[[]w4-r3[]] PASSED*",
        "*test_names_its_rank[[]w4-r1[]] PASSED*",
        "*PytestWarning: --fake-world-ranks=all cannot sweep 1 test(s) that are unittest.TestCase methods "
        "or parametrize world_size/rank themselves; they run one rank each: test_it.py::TestOld::test_one_rank",
    ])
    assert "test_names_its_rank[w4-r0]" not in result.stdout.str()


def test_report_text_and_json(pytester: pytest.Pytester, run_tests: RunTests) -> None:
    source = """
@pytest.mark.fake_world(mesh={"dp": 2, "tp": 2}, rank=[0, 1], fail={"all_reduce": 3})
def test_ops(device_mesh, collectives):
    dist.all_reduce(torch.ones(4))
    dist.all_reduce(torch.ones(4), group=device_mesh.get_group("tp"))
    collectives.clear()  # for the test's own assertions: the report keeps what ran
    with pytest.raises(dist.DistBackendError):
        dist.all_reduce(torch.ones(4))
    dist.barrier()

@pytest.mark.fake_world(2)
def test_no_collectives():
    pass
"""
    result = run_tests(source, "--fake-world-report", "--fake-world-report-json=report.json")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines([
        "*= fake world collectives =*",
        "test_it.py::test_ops[[]w4-dp2xtp2-r0[]] (world 4, rank 0)",
        "    group default_pg (ranks 0-3) * 3 calls (1 failed) *32 B",
        "        all_reduce * 2 calls (1 failed) *32 B",
        "        barrier * 1 call *0 B",
        "    group tp (ranks 0, 1) * 1 call *16 B",
        "        all_reduce * 1 call *16 B",
        "    total * 4 calls (1 failed) *48 B",
        "test_it.py::test_ops[[]w4-dp2xtp2-r1[]] (world 4, rank 1)",
        "all tests",
        "    all_reduce * 6 calls (2 failed) *96 B",
        "    barrier * 2 calls *0 B",
        "2 tests ran 8 collectives, 2 failed by injected faults, 96 B in all",
    ])
    assert "test_no_collectives" not in result.stdout.str()
    report = json.loads((pytester.path / "report.json").read_text())
    assert report["total"] == {"tests": 2, "count": 8, "bytes": 96, "failed": 2}
    assert report["collectives"] == {
        "all_reduce": {"count": 6, "bytes": 96, "failed": 2}, "barrier": {"count": 2, "bytes": 0, "failed": 0},
    }
    entry = report["tests"]["test_it.py::test_ops[w4-dp2xtp2-r1]"]
    assert (entry["world_size"], entry["rank"], entry["mesh"]) == (4, 1, "dp2xtp2")
    assert (entry["tensors"], entry["memory"]) == ("real", None)  # memory: only where measured
    assert entry["groups"] == [
        {"label": "default_pg", "ranks": "0-3", "size": 4,
         "ops": {"all_reduce": {"count": 2, "bytes": 32, "failed": 1}, "barrier": {"count": 1, "bytes": 0, "failed": 0}},
         "total": {"count": 3, "bytes": 32, "failed": 1}},
        {"label": "tp", "ranks": "0, 1", "size": 2, "ops": {"all_reduce": {"count": 1, "bytes": 16, "failed": 0}},
         "total": {"count": 1, "bytes": 16, "failed": 0}},
    ]
    assert entry["total"] == {"count": 4, "bytes": 48, "failed": 1}

    # The same report, byte for byte, when the cases run on two xdist workers.
    pytest.importorskip("xdist")
    result = run_tests(source, "--fake-world-report", "--fake-world-report-json=xdist.json", "-n", "2")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["2 tests ran 8 collectives, 2 failed by injected faults, 96 B in all"])
    assert json.loads((pytester.path / "xdist.json").read_text()) == report


def test_report_totals_only_by_op_and_by_group_label(run_tests: RunTests) -> None:
    """#23, point 10: a totals-only form, and a group named by every label it
    carries (a dp1 x tp2 mesh's tp is the default group)."""
    result = run_tests(
        """
@pytest.mark.fake_world(4, mesh={"dp": 2, "tp": 2})
def test_a(device_mesh):
    dist.all_reduce(torch.ones(4), group=device_mesh["tp"].get_group())
    dist.all_reduce(torch.ones(8), group=device_mesh["dp"].get_group())

@pytest.mark.fake_world(2, mesh={"dp": 1, "tp": 2})
def test_b(device_mesh):
    dist.all_reduce(torch.ones(4), group=device_mesh["tp"].get_group())
""",
        "--fake-world-report-totals",
    )
    result.assert_outcomes(passed=2)
    text = result.stdout.str()
    assert "test_it.py::test_a" not in text.split("fake world collectives")[1]  # no per-test part
    result.stdout.fnmatch_lines([
        "all tests",
        "    all_reduce * 3 calls * 64 B",
        "all tests, by group",
        "    default_pg/tp * 1 call * 16 B",
        "    dp * 1 call * 32 B",
        "    tp * 1 call * 16 B",
        "2 tests ran 3 collectives, 64 B in all",
    ])


def test_report_json_path_is_checked_before_the_run(run_tests: RunTests) -> None:
    result = run_tests("def test_it():\n    raise AssertionError('ran')\n",
                 "--fake-world-report-json=no/such/dir/r.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--fake-world-report-json=no/such/dir/r.json: the folder " in result.stderr.str()
    assert "no/such/dir does not exist" in result.stderr.str()


def test_hooks_from_conftest(pytester: pytest.Pytester, run_tests: RunTests) -> None:
    pytester.makeconftest("""
import torch, torch.distributed as dist
seen = []

def pytest_fake_world_setup(world, item):
    seen.append(("setup", item.name, world.rank))
    dist.barrier()

def pytest_fake_world_teardown(world, item):
    seen.append(("teardown", item.name, world.collectives.ops))

def pytest_fake_world_make_id(spec, definition):
    if definition.name == "test_renamed":
        return f"rank{spec.rank}of{spec.world_size}"

def pytest_sessionfinish(session):
    print("\\nSEEN", seen)
""")
    result = run_tests("""
@pytest.mark.fake_world(2, rank="all")
def test_renamed():
    dist.all_reduce(torch.ones(1))

@pytest.mark.fake_world(3)
def test_default_id():
    pass
""", "-v", "-s")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines([
        "*test_renamed[[]rank0of2[]] PASSED*",
        "*test_renamed[[]rank1of2[]] PASSED*",
        "*test_default_id[[]w3-r0[]] PASSED*",
    ])
    seen = [line for line in result.stdout.lines if line.startswith("SEEN ")]
    assert seen == ["SEEN " + repr([
        ("setup", "test_renamed[rank0of2]", 0),
        ("teardown", "test_renamed[rank0of2]", ["barrier", "all_reduce"]),
        ("setup", "test_renamed[rank1of2]", 1),
        ("teardown", "test_renamed[rank1of2]", ["barrier", "all_reduce"]),
        ("setup", "test_default_id[w3-r0]", 0),
        ("teardown", "test_default_id[w3-r0]", ["barrier"]),
    ])]


def test_markers_and_fixtures_are_documented(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--markers")
    result.stdout.fnmatch_lines([
        "@pytest.mark.fake_world(world_size=None, *, rank=0, mesh=None, device='cpu', values=None, "
        "fail=None, fail_at='issue', backend=None, record=None, tensors='real', local_world_size=None, env=None, exact_dims=None, per_rank_modules=(), check_ranks=None, id=None): run the test in a fake "
        "torch.distributed world*",
    ])
    result = pytester.runpytest_subprocess("--fixtures")
    for name in ("fake_world", "rank", "world_size", "device_mesh", "fake_store", "collectives", "memory"):
        result.stdout.fnmatch_lines([f"{name} -- *pytest_fakepg*plugin*__init__.py*"])


def test_plugin_does_not_import_torch_for_plain_runs(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_plain="""
import sys
def test_no_torch():
    assert "torch" not in sys.modules
""")
    result = pytester.runpytest_subprocess("-p", "no:randomly")
    result.assert_outcomes(passed=1)


def readme_snippets() -> tuple[list[str], list[str]]:
    """The README's Python snippets, and an id for each: its section."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    parts = readme.split("```python\n")
    return [
        (re.findall(r"^## (.+)$", "".join(parts[:i]), re.MULTILINE)[-1:] or ["top"])[0] + f" #{i}"
        for i in range(1, len(parts))
    ], [part.split("```", 1)[0] for part in parts[1:]]


SECTIONS, SNIPPETS = readme_snippets()
# The cases each snippet's tests make, in order; None: a script, run with python.
CASES = [14, None, 1, 1, 1]


def test_every_readme_snippet_is_run() -> None:
    assert len(SNIPPETS) == len(CASES), SECTIONS


@pytest.mark.parametrize(("snippet", "cases"), list(zip(SNIPPETS, CASES)), ids=SECTIONS)
def test_the_readmes_snippets_run_as_written(pytester: pytest.Pytester, run_tests: RunTests, snippet: str, cases: int | None) -> None:
    if "torch.testing._internal" in snippet:
        pytest.importorskip("expecttest")  # torch's test harness imports it
    if cases is None:
        result = pytester.runpython(pytester.makepyfile(snippet=snippet))
        assert result.ret == 0, result.stderr.str()
    else:
        run_tests(snippet, header="").assert_outcomes(passed=cases)
