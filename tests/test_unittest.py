"""unittest.TestCase suites in exact worlds: the marker on a TestCase, and the
drop-in for torch's harness classes (create_exact_test_class, ExactTestCase).

The drop-in is run here under unittest's own runner, in this process (as
``python test_x.py`` runs torch's suites), and under pytest in a subprocess.
The torch-style classes are in tests/torch_style.py.
"""

from __future__ import annotations

import unittest
from pathlib import Path

import pytest

pytest.importorskip("expecttest")  # torch.testing._internal needs it

from pytest_fakepg import ExactTestCase, create_exact_test_class  # noqa: E402

from . import torch_style  # noqa: E402


def outcomes(cls: type) -> dict[str, tuple[str, str]]:
    """Each test of ``cls`` run by unittest's runner: name -> (outcome, text)."""
    result = unittest.TestResult()
    unittest.TestLoader().loadTestsFromTestCase(cls).run(result)
    found = {}
    for kind, entries in (("failure", result.failures), ("error", result.errors), ("skip", result.skipped)):
        for test, text in entries:
            found[test._testMethodName] = (kind, text)
    for name in unittest.TestLoader().getTestCaseNames(cls):
        found.setdefault(name, ("pass", ""))
    return found


@pytest.fixture
def seen():
    torch_style.SEEN.clear()
    yield torch_style.SEEN
    torch_style.SEEN.clear()


# -- the drop-in: torch's harness classes, unchanged, in exact worlds -------------------


def test_dtensor_test_base_runs_every_rank_on_its_own_instance(seen) -> None:
    got = outcomes(create_exact_test_class(torch_style.DTensorStyle))
    assert got["test_each_rank_on_its_own_instance"] == ("pass", "")
    ranks = [entry for entry in seen if entry[0] == "instance"]
    # self.rank and dist.get_rank() agree; DTensorTestBase's world size (4),
    # device type (cpu) and build_device_mesh() are torch's own.
    assert [(r, g, size, device) for _, r, g, _, size, device in ranks] == [(r, r, 4, "cpu") for r in range(4)]
    assert len({instance for _, _, _, instance, _, _ in ranks}) == 4


def test_rank_divergent_code_and_per_rank_state(seen) -> None:
    got = outcomes(create_exact_test_class(torch_style.DTensorStyle))
    assert got["test_rank_divergent_code"] == ("pass", "")
    assert got["test_instance_state_is_per_rank"] == ("pass", "")
    assert sorted(e for e in seen if e[0] == "divergent") == [("divergent", r) for r in range(4)]
    assert sorted(e for e in seen if e[0] == "state") == [("state", r, (r, r)) for r in range(4)]


def test_a_failure_on_one_rank_fails_the_test_naming_the_rank() -> None:
    kind, text = outcomes(create_exact_test_class(torch_style.DTensorStyle))["test_fails_on_rank_2"]
    assert kind == "failure"
    assert "AssertionError: Scalars are not close!\n\nExpected 5.0 but got 4.0." in text
    assert "raised by rank 2 of an exact fake world of 4" in text


def test_skips_on_one_rank_skip_the_test() -> None:
    got = outcomes(create_exact_test_class(torch_style.DTensorStyle))
    assert got["test_skips_on_rank_1"] == ("skip", "rank 1 has no data")
    # torch's harness exits a rank with a TEST_SKIPS code when GPUs are too few
    assert got["test_too_few_gpus_on_rank_3"] == ("skip", torch_style.TOO_FEW_GPUS.message)


def test_another_exit_code_fails_the_test() -> None:
    kind, text = outcomes(create_exact_test_class(torch_style.DTensorStyle))["test_exits_on_rank_1"]
    assert kind == "error"
    assert "rank 1 called sys.exit(3)" in text


def test_skipped_tests_are_skipped_and_checked() -> None:
    cls = create_exact_test_class(torch_style.DTensorStyle, skipped_tests=["test_fails_on_rank_2"])
    assert cls.__name__ == "DTensorStyleExact" and cls.__module__ == torch_style.__name__
    assert outcomes(cls)["test_fails_on_rank_2"][0] == "skip"
    with pytest.raises(ValueError, match=r"skipped_tests names \['test_nope'\], which DTensorStyle has no test"):
        create_exact_test_class(torch_style.DTensorStyle, skipped_tests=["test_nope"])
    with pytest.raises(TypeError, match="takes a unittest.TestCase class; got 3"):
        create_exact_test_class(3)  # type: ignore[arg-type]


def test_a_class_with_its_own_world_size_and_mesh(seen) -> None:
    assert outcomes(create_exact_test_class(torch_style.EightRanks)) == {"test_two_dim_mesh": ("pass", "")}
    assert sorted(e[1:] for e in seen) == [(r, r // 4, r % 4) for r in range(8)]


def test_a_multi_process_test_case_that_sets_up_its_own_group(seen) -> None:
    got = outcomes(create_exact_test_class(torch_style.ProcessStyle))
    assert got["test_inits_its_own_group"] == ("pass", "")
    # the call is served by the world's group, whatever backend it names
    assert sorted(seen) == [("process", r, "fakepg") for r in range(4)]
    kind, text = got["test_wrong_world_size"]
    assert kind == "error"
    assert "init_process_group(world_size=3, rank=0) in rank 0's program of an exact fake world of 4" in text


def test_torchs_thread_harness(seen) -> None:
    assert outcomes(create_exact_test_class(torch_style.ThreadStyle)) == {"test_on_threads_harness": ("pass", "")}
    assert sorted(seen) == [("thread", r) for r in range(4)]


def test_exact_test_case_as_the_base_class(seen) -> None:
    assert outcomes(torch_style.Plain) == {"test_default_world": ("pass", "")}
    assert outcomes(torch_style.PlainTwo) == {"test_two_ranks": ("pass", "")}
    assert sorted(seen) == [("plain", r, 4, "cpu", 4.0) for r in range(4)] + [("two", r, 2) for r in range(2)]


def test_exact_test_case_first_among_a_harness_classs_bases(seen) -> None:
    cls = type("Mixed", (ExactTestCase, torch_style.DTensorStyle), {"__module__": __name__})
    assert outcomes(cls)["test_rank_divergent_code"] == ("pass", "")
    assert sorted(e for e in seen if e[0] == "divergent") == [("divergent", r) for r in range(4)]


def test_the_drop_in_under_pytest(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(torch_style=Path(torch_style.__file__).read_text())
    pytester.makepyfile(test_it="""
from pytest_fakepg import create_exact_test_class
from torch_style import DTensorStyle

DTensorStyleExact = create_exact_test_class(DTensorStyle)
del DTensorStyle
""")
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-rs", "-W", "ignore::ImportWarning")
    result.assert_outcomes(passed=3, failed=2, skipped=2)
    result.stdout.fnmatch_lines_random(["*raised by rank 2 of an exact fake world of 4*",
                                        "*rank 1 called sys.exit(3)*",
                                        "SKIPPED*rank 1 has no data*"])


# -- the marker on a unittest.TestCase ----------------------------------------------


MARKED = """
import unittest

EVENTS = []
INSTANCES = []  # kept alive, so that no later instance takes the id of one


@pytest.mark.fake_world(4, values="exact")
class TestMarked(unittest.TestCase):
    def setUp(self):
        INSTANCES.append(self)
        EVENTS.append(("setUp", self.rank, id(self)))

    def tearDown(self):
        EVENTS.append(("tearDown", self.rank, id(self)))

    def test_every_rank(self):
        assert self.rank == dist.get_rank()
        t = torch.tensor([float(self.rank)])
        dist.all_reduce(t)
        self.assertEqual(t.item(), 6.0)
        EVENTS.append(("test", self.rank, id(self)))

    def test_fails_on_rank_3(self):
        dist.barrier()
        self.assertEqual(self.rank, 0 if self.rank != 3 else -1)

    def test_skips_on_rank_0(self):
        if self.rank == 0:
            self.skipTest("not on rank 0")
        dist.barrier()

    def test_subtest_fails_on_rank_1(self):
        for i in range(2):
            with self.subTest(i=i):
                self.assertFalse(self.rank == 1 and i == 1)

    @unittest.expectedFailure
    def test_expected_failure(self):
        self.assertEqual(self.rank, 99)

    @unittest.expectedFailure
    def test_unexpected_success(self):
        dist.barrier()


class TestLater(unittest.TestCase):
    @pytest.mark.fake_world(2, values="exact")
    def test_method_marker(self):
        t = torch.ones(1)
        dist.all_reduce(t)
        self.assertEqual(t.item(), 2.0)

    def test_events(self):
        ran = [e for e in EVENTS if e[2] in {i for k, _, i in EVENTS if k == "test"}]
        # each rank: setUp, test, tearDown, on its own instance
        assert sorted((k, r) for k, r, _ in ran) == sorted(
            (k, r) for k in ("setUp", "test", "tearDown") for r in range(4))
        assert len({i for _, _, i in ran}) == 4
"""


def test_the_marker_runs_a_test_case_on_every_rank(run_tests) -> None:
    result = run_tests(MARKED, "-rsxX", "-p", "no:randomly")
    result.assert_outcomes(passed=3, failed=3, skipped=1, xfailed=1)
    result.stdout.fnmatch_lines_random([
        "*raised by rank 3 of an exact fake world of 4*",
        "*SKIPPED*not on rank 0*",
        "*in subtest*(i=1)*",
        "*test_unexpected_success is marked @unittest.expectedFailure but passed on every rank*",
    ])
    assert "c10d_logger" not in result.stdout.str()  # no DEBUG line per stopped rank


def test_the_marker_on_a_torch_harness_class_says_what_to_use(run_tests) -> None:
    result = run_tests(
        """
from torch.testing._internal.common_distributed import MultiProcessTestCase


@pytest.mark.fake_world(4, values="exact")
class TestHarness(MultiProcessTestCase):
    def test_x(self):
        pass
""")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([
        "*TestHarness is built on torch's MultiProcessTestCase*create_exact_test_class(TestHarness)*",
    ])
