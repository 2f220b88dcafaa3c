"""The bad-input catalogue: every invalid marker argument, option value and
misuse, with the exact message a user sees. Each row is checked here, in a
pytest subprocess, and must appear verbatim in docs/errors.md's table."""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

import pytest

from .conftest import RunTests

CATALOGUE = Path(__file__).resolve().parent.parent / "docs" / "errors.md"


class Row(NamedTuple):
    what: str
    written: str  # the marker's arguments, the command-line options, or the misuse
    message: str


# Marker arguments: the test errors before its body runs, with
# "<message> [invalid @pytest.mark.fake_world(...)]" (the cause first).
MARKER = [
    Row("world size of 0", "fake_world(0)", "world_size must be an int >= 1, got 0"),
    Row("an id for several worlds", "fake_world([2, 4], id='plan')",
        "id='plan' names one world, and this marker gives 2: w2, w4; give one world size and one mesh, or leave id out"),
    Row("an id that is not a name", "fake_world(2, id=3)",
        "id must be a non-empty str without brackets, like id='plan'; got 3"),
    Row("world size not an int", "fake_world('4')", "world_size must be an int >= 1, got '4' (str)"),
    Row("world size in a list", "fake_world([2, 0])", "world_size must be an int >= 1, got 0"),
    Row("rank outside the world", "fake_world(4, rank=4)",
        "rank must be in [0, 3] (or a negative index from -4) for world_size=4, got 4"),
    Row("rank not an int or 'all'", "fake_world(4, rank='some')",
        "rank must be an int, a list of ints or 'all', got 'some'"),
    Row("mesh that does not match", "fake_world(4, mesh=(3, 2))",
        "mesh (3, 2) has 6 ranks but world_size is 4; the product of the mesh sizes must equal world_size"),
    Row("mesh -1 that cannot be inferred", "fake_world(4, mesh=(3, -1))",
        "mesh (3, -1) cannot cover world_size=4: 4 is not divisible by 3"),
    Row("duplicate dimension names", "fake_world(4, mesh=(('dp', 2), ('dp', 2)))",
        "mesh dimension names must be unique; 'dp' appears more than once in mesh=(('dp', 2), ('dp', 2))"),
    Row("mesh of the wrong type", "fake_world(4, mesh=[2, 2])",
        "mesh must be a dict of dimension name to size like {'dp': 2, 'tp': 4}, a tuple of sizes like (2, 4), "
        "or a tuple of (name, size) pairs; got 2"),
    Row("unknown op in fail (a typo)", "fake_world(2, fail='all_reduse')",
        "unknown collective 'all_reduse' in fail (did you mean 'all_reduce'?); allowed: '*' or one of "
        "all_reduce, all_reduce_coalesced, all_gather, all_gather_into_tensor, all_gather_coalesced, "
        "all_gather_into_tensor_coalesced, reduce_scatter, reduce_scatter_tensor, "
        "reduce_scatter_tensor_coalesced, all_to_all, all_to_all_single, broadcast, reduce, gather, "
        "scatter, send, recv, barrier, gather_into_tensor; or all_gather_single (= all_gather_into_tensor), "
        "reduce_scatter_single (= reduce_scatter_tensor), gather_single (= gather_into_tensor), "
        "isend (= send), irecv (= recv)"),
    Row("call number below 1", "fake_world(2, fail={'barrier': 0})",
        "the call number for 'barrier' must be an int >= 1 (calls count from 1), got 0"),
    Row("unknown values", "fake_world(2, values='random')",
        "values must be one of 'uniform', 'copy', 'exact', got 'random'"),
    Row("a rank given to an exact world", "fake_world(4, rank=1, values='exact')",
        "rank=1 was given with values='exact', which runs every rank of the world in one test; leave rank out "
        "(the rank fixture and dist.get_rank() give each rank its own)"),
    Row("a rank sweep of an exact world", "fake_world(4, rank='all', values='exact')",
        "rank='all' was given with values='exact', which runs every rank of the world in one test; leave rank out"),
    Row("stock backend asked for exact values", "fake_world(2, backend='fake', values='exact')",
        "values='exact' needs the fakepg backend; torch's stock backend (backend='fake') only has values='copy'"),
    Row("unknown fail_at", "fake_world(2, fail_at='later')", "fail_at must be one of 'issue', 'wait', got 'later'"),
    Row("unsupported device type", "fake_world(2, device='xpu')",
        "device must be one of 'cpu', 'cuda' (the device types the fakepg backend serves); got 'xpu'"),
    Row("unknown keyword", "fake_world(2, rnak=1)",
        "got an unexpected keyword argument 'rnak' (did you mean 'rank'?) (allowed: world_size, rank, mesh, "
        "device, values, fail, "
        "fail_at, backend, record, tensors, local_world_size, env, exact_dims, per_rank_modules, check_ranks, id)"),
    Row("a keyword one letter off", "fake_world(4, ranks='all')",
        "got an unexpected keyword argument 'ranks' (did you mean 'rank'?) (allowed: world_size, rank, mesh, device, values, fail, fail_at, backend, record, tensors, local_world_size, env, exact_dims, per_rank_modules, check_ranks, id)"),
    Row("unknown tensors", "fake_world(2, tensors='meta')", "tensors must be one of 'real', 'fake', got 'meta'"),
    Row("exact_dims without exact values", "fake_world(mesh={'pp': 2, 'dp': 2}, exact_dims='pp')",
        "exact_dims='pp' picks the ranks an exact world runs; give values='exact' with it (got values=None)"),
    Row("exact_dims without a named mesh", "fake_world(4, values='exact', exact_dims='pp')",
        "exact_dims='pp' names mesh dimensions, and this world has no named mesh; give one, like "
        "mesh={'pp': 4, 'dp': 2}"),
    Row("exact_dims naming no dimension", "fake_world(mesh={'pp': 2, 'dp': 2}, values='exact', exact_dims='p')",
        "exact_dims names 'p' (did you mean 'pp'?), which is not a dimension of the mesh (pp, dp)"),
    Row("per_rank_modules not module names", "fake_world(4, values='exact', per_rank_modules=['megatron core'])",
        "per_rank_modules must be a module name or a list of them, like per_rank_modules=['mylib.state']; "
        "got ['megatron core']"),
    Row("fake tensors on the stock backend", "fake_world(2, tensors='fake', backend='fake')",
        "tensors='fake' needs the fakepg backend, which records what fake tensors send; torch's stock backend "
        "(backend='fake') records nothing"),
    Row("local_world_size not dividing the world", "fake_world(8, local_world_size=3)",
        "local_world_size must be an int >= 1 that divides world_size=8 (ranks per node), got 3"),
    Row("env not a bool", "fake_world(2, env='yes')", "env must be True or False, got 'yes'"),
    Row("check_ranks not a bool", "fake_world(2, check_ranks='no')", "check_ranks must be True or False, got 'no'"),
    Row("stock backend asked for uniform values", "fake_world(2, backend='fake', values='uniform')",
        "values='uniform' needs the fakepg backend; torch's stock backend (backend='fake') only has values='copy'"),
    Row("stock backend asked for a per-op fault", "fake_world(2, backend='fake', fail={'barrier': 2})",
        "fail={'barrier': 2} needs the fakepg backend; torch's stock backend (backend='fake') can only fail "
        "every collective when issued (fail=True, fail_at='issue')"),
    Row("stock backend asked to record", "fake_world(2, backend='fake', record=True)",
        "record=True needs the fakepg backend; torch's stock backend (backend='fake') records nothing"),
]

# Option values: pytest stops with a usage error (exit code 4).
OPTIONS = [
    Row("unknown backend option", "--fake-world-backend=gloo", "--fake-world-backend must be one of fakepg, fake; got 'gloo'"),
    Row("unknown ranks option", "--fake-world-ranks=some", "--fake-world-ranks must be 'all' (or unset); got 'some'"),
    Row("bad ini world size", "-o fake_world_size=zero", "fake_world_size must be an int >= 1; got 'zero'"),
    Row("unknown real backend", "--fake-world-real=mpi", "--fake-world-real must be one of gloo, nccl, env; got 'mpi'"),
    Row("real ranks from torchrun's environment, outside torchrun", "--fake-world-real=env",
        "--fake-world-real=env runs as one rank of a torchrun world, and RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT "
        "is not set: run pytest under torchrun (torchrun --nproc-per-node 2 -m pytest --fake-world-real=env ...), "
        "or use --fake-world-real=gloo to start real ranks on this machine"),
    Row("a real run's timeout of 0", "--fake-world-real=gloo --fake-world-real-timeout=0",
        "--fake-world-real-timeout must be a number of seconds > 0; got 0.0"),
]

# Misuse: (row, test source, extra options, expected outcome).
MISUSE = [
    (Row("two markers on one test", "fake_world(4) over fake_world(8) on one function",
         "2 @pytest.mark.fake_world markers on one test: fake_world(8) and fake_world(4); keep one (to run several worlds, give one marker lists: world_size=[4, 8], mesh=[...]) [invalid @pytest.mark.fake_world(...)]"),
     "@pytest.mark.fake_world(4)\n@pytest.mark.fake_world(8)\ndef test_it():\n    pass\n", [], {"errors": 1}),
    (Row("cuda world without a GPU", "fake_world(8, device='cuda') on a machine without one",
         "fake_world(device='cuda') needs a cuda device; none is available"),
     "@pytest.mark.fake_world(8, device='cuda')\ndef test_it():\n    pass\n", ["-rs"], {"skipped": 1}),
    (Row("marker sweep on a unittest.TestCase", "fake_world([2, 4]) on a TestCase method",
         "this test cannot be parametrized by the marker (it is a unittest.TestCase method or parametrizes "
         "world_size/rank itself): give one world size, one rank and one mesh [invalid "
         "@pytest.mark.fake_world(...)]"),
     "import unittest\nclass T(unittest.TestCase):\n    @pytest.mark.fake_world([2, 4])\n"
     "    def test_it(self):\n        pass\n", [], {"errors": 1}),
    (Row("a process group left behind", "a test calls init_process_group and never destroys it",
         "test_it.py::test_it left a default process group behind (backend 'fake', world size 2); "
         "pytest-fakepg destroyed it. Call torch.distributed.destroy_process_group() in the test, or use the "
         "fake_world marker or FakeWorld, which clean up for you."),
     "import torch.distributed as dist, torch.testing._internal.distributed.fake_pg\ndef test_it():\n"
     "    dist.init_process_group('fake', rank=0, world_size=2, store=dist.HashStore())\n", [],
     {"passed": 1, "warnings": 1}),
    (Row("reading the log of a stock-backend world", "collectives fixture with --fake-world-backend=fake",
         "this fake world records no collectives: it runs on torch's stock backend (backend='fake'), which "
         "records nothing; use backend='fakepg'"),
     "def test_it(collectives):\n    collectives.count()\n", ["--fake-world-backend=fake"], {"failed": 1}),
    (Row("a world inside a world", "FakeWorld(...).start() while a default group exists",
         "cannot start a FakeWorld while a default process group exists (backend 'fakepg', world size 2); "
         "call torch.distributed.destroy_process_group() first"),
     "from pytest_fakepg import FakeWorld\n@pytest.mark.fake_world(2)\ndef test_it():\n"
     "    FakeWorld(4).start()\n", [], {"failed": 1}),
    (Row("exact values asked of a one-rank world", "FakeWorld(4, values='exact')",
         "values='exact' runs every rank of the world: use pytest_fakepg.ExactWorld with the same arguments "
         "(FakeWorld runs one rank, with values 'uniform' or 'copy')"),
     "from pytest_fakepg import FakeWorld\ndef test_it():\n    FakeWorld(4, values='exact')\n", [], {"failed": 1}),
    (Row("one rank's values asked of an exact world", "ExactWorld(4, values='uniform')",
         "ExactWorld runs every rank of the world (values='exact'); values='uniform' runs one rank: use "
         "pytest_fakepg.FakeWorld with the same arguments"),
     "from pytest_fakepg import ExactWorld\ndef test_it():\n    ExactWorld(4, values='uniform')\n", [], {"failed": 1}),
    (Row("the fakepg backend without a world", "init_process_group('fakepg', ...) by hand",
         "the fakepg backend makes groups only inside a fake world: use `with pytest_fakepg.FakeWorld(...)` or "
         "the @pytest.mark.fake_world marker instead of calling init_process_group('fakepg') yourself"),
     "import torch.distributed as dist\nfrom pytest_fakepg import FakeWorld\ndef test_it():\n"
     "    FakeWorld(2).start().stop()  # the backend is registered from now on\n"
     "    dist.init_process_group('fakepg', rank=0, world_size=2, store=dist.HashStore())\n",
     [], {"failed": 1}),
    (Row("a fixture of yours taking rank in an exact world", "fake_world(2, values='exact'), fixture(rank)",
         "fixture 'mine' takes 'rank', which differs per rank in an exact world (values='exact'): fixtures run "
         "once, outside every rank, and only the test body runs per rank. Take 'rank' in the test function "
         "instead."),
     "@pytest.fixture\ndef mine(rank):\n    return rank\n@pytest.mark.fake_world(2, values='exact')\n"
     "def test_it(mine):\n    pass\n", [], {"errors": 1}),
    (Row("an exact world on a torch harness class", "fake_world(2, values='exact') on a MultiProcessTestCase",
         "T is built on torch's MultiProcessTestCase, which starts a process (or thread) per rank itself; run it "
         "in exact worlds with pytest_fakepg.create_exact_test_class(T), or with pytest_fakepg.ExactTestCase "
         "first among its bases, instead of @pytest.mark.fake_world(..., values='exact')"),
     "from torch.testing._internal.common_distributed import MultiProcessTestCase\n"
     "@pytest.mark.fake_world(2, values='exact')\nclass T(MultiProcessTestCase):\n"
     "    def test_it(self):\n        pass\n", ["-W", "ignore::ImportWarning"], {"errors": 1}),
    (Row("a rank's own init_process_group that disagrees", "init_process_group(world_size=3) in fake_world(2, "
         "values='exact')",
         "init_process_group(world_size=3, rank=0) in rank 0's program of an exact fake world of 2: the world's "
         "group is this rank's; give world_size=2 and rank=0, or neither"),
     "import torch.distributed as dist\n@pytest.mark.fake_world(2, values='exact')\ndef test_it():\n"
     "    dist.init_process_group('gloo', rank=0, world_size=3)\n", [], {"failed": 1}),
    (Row("a per-rank attribute outside the ranks", "world.rank of an exact world in a fixture",
         "FakeWorld.rank differs per rank in an exact world (values='exact') and is only available inside a "
         "rank's program (the test body, or a function given to FakeWorld.run), not in fixtures or outside run()"),
     "@pytest.fixture\ndef mine(fake_world):\n    return fake_world.rank\n"
     "@pytest.mark.fake_world(2, values='exact')\ndef test_it(mine):\n    pass\n", [], {"errors": 1}),
    (Row("a store wait no rank answers, uniform", "fake_store.get('ready') in fake_world(4, rank=1)",
         "store get('ready') at test_it.py:4 waits for 'ready', which no rank will set: in a uniform world only "
         "rank 1 of 4 runs. Set the key in the test before waiting for it, or use values='exact' to run every rank"),
     "@pytest.mark.fake_world(4, rank=1)\ndef test_it(fake_store):\n    fake_store.get('ready')\n", [],
     {"failed": 1}),
    (Row("a store wait no rank answers, exact", "fake_store.get('ready') in rank 1 of fake_world(2, values='exact')",
         "store get('ready') at test_it.py:5 in rank 1 timed out: no rank set 'ready', and no other rank could "
         "run (an exact world times such a wait out at once; a cluster, after the store's timeout)"),
     "@pytest.mark.fake_world(2, values='exact')\ndef test_it(rank, fake_store):\n    if rank == 1:\n"
     "        fake_store.get('ready')\n", [], {"failed": 1}),
    (Row("a misspelt marker", "@pytest.mark.fake_wrold(4)",
         "@pytest.mark.fake_wrold is not a marker anyone registered: did you mean @pytest.mark.fake_world? (as "
         "written, the test would run without a fake world)"),
     "@pytest.mark.fake_wrold(4)\ndef test_it():\n    pass\n", ["-W", "ignore::pytest.PytestUnknownMarkWarning"],
     {"errors": 1}),
    (Row("receiving objects only another rank has", "dist.recv_object_list([None], src=0) in fake_world(2, rank=1)",
         "recv_object_list from rank 0 (reached from test_it.py:5) in a fake world where only rank 1 runs, so what "
         "the sender sends cannot be known, and this rank's list holds only placeholders ([None]) to stand for "
         "it. torch.distributed.pipelining receives each stage's metadata this way: run pipeline stages with "
         "values='exact', where every rank runs"),
     "import torch.distributed as dist\n@pytest.mark.fake_world(2, rank=1)\ndef test_it():\n"
     "    dist.recv_object_list([None], src=0)\n", [], {"failed": 1}),
    (Row("memory in an exact world of real tensors", "memory fixture in fake_world(2, values='exact')",
         "the memory fixture measures each rank's memory in an exact world with tensors='fake'; with real tensors "
         "(this world) it does not measure yet: use tensors='fake', or values='uniform' or 'copy'"),
     "@pytest.mark.fake_world(2, values='exact')\ndef test_it(memory):\n    pass\n", [], {"errors": 1}),
    (Row("torch.compile's default backend on fake tensors",
         "torch.compile(model)(x) in fake_world(2, tensors='fake') (a warning, once a world)",
         "pytest-fakepg: torch.compile's inductor kernels cannot run on fake tensors (they read and write memory a "
         "fake tensor does not have), so in this world with tensors='fake' each graph is compiled with "
         "'aot_eager_decomp_partition' instead: dynamo's graphs, graph breaks and fullgraph errors, inductor's "
         "decompositions and activation partitioning, run as ATen ops. The ledger is the compiled run's; memory is "
         "close to it, not equal (see docs/fake-tensors.md, 'torch.compile')."),
     "import torch\n@pytest.mark.fake_world(2, tensors='fake')\ndef test_it():\n"
     "    torch.compile(torch.nn.Linear(2, 2))(torch.ones(1, 2))\n", [], {"passed": 1}),
    (Row("split sizes no uniform world could have", "dist.all_to_all_single(out, x, [1, 1, 5], [1, 2, 3]) in fake_world(3, rank=0)",
         "fakepg all_to_all_single: output_split_sizes[2] is 5 but in a uniform world every rank sends this rank (0) "
         "input_split_sizes[0] = 1 (the same splits on every rank) or, in a ring exchange, output_split_sizes[1] = "
         "input_split_sizes[2] = 3 (every rank's splits this rank's, shifted); use values='exact' or 'copy' for "
         "other splits"),
     "import torch, torch.distributed as dist\n@pytest.mark.fake_world(3, rank=0)\ndef test_it():\n"
     "    dist.all_to_all_single(torch.zeros(7), torch.zeros(6), [1, 1, 5], [1, 2, 3])\n", [], {"failed": 1}),
    (Row("a fixture where torch is not installed", "rank fixture, torch missing",
         "pytest-fakepg's fake worlds need torch, which could not be imported (No module named 'torch'); "
         "install it, e.g. pip install torch"),
     "def test_it(rank):\n    pass\n", [], {"errors": 1}),
]


def test_invalid_marker_arguments_error_their_test_only(run_tests: RunTests) -> None:
    source = "".join(
        f"\n@pytest.mark.{row.written}\ndef test_bad_{i}():\n    raise AssertionError('body ran')\n"
        for i, row in enumerate(MARKER)
    )
    source += "\n@pytest.mark.fake_world(2)\ndef test_good():\n    pass\n"
    result = run_tests(source, header="import pytest\n")
    result.assert_outcomes(passed=1, errors=len(MARKER))
    out = result.stdout.str()
    for i, row in enumerate(MARKER):
        assert f"\n{row.message} [invalid @pytest.mark.fake_world(...)]\n" in out, row.what
        # the short summary leads with the cause
        assert f"ERROR test_it.py::test_bad_{i}[invalid-fake-world] - Failed: {row.message[:10]}" in out, row.what
    assert "body ran" not in out


@pytest.mark.parametrize("row", OPTIONS, ids=[r.what for r in OPTIONS])
def test_bad_option_values_are_usage_errors(run_tests: RunTests, row: Row) -> None:
    result = run_tests("def test_it():\n    pass\n", *row.written.split(), header="import pytest\n")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"ERROR: {row.message}" in result.stderr.str()


@pytest.mark.parametrize(("row", "source", "args", "outcomes"), MISUSE, ids=[m[0].what for m in MISUSE])
def test_misuse(pytester: pytest.Pytester, run_tests: RunTests, row: Row, source: str, args: list[str], outcomes: dict[str, int]) -> None:
    if "cuda" in row.what:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
    if "torch is not installed" in row.what:
        # Shadow torch in the test's directory (which pytest puts first on sys.path).
        pytester.mkpydir("torch").joinpath("__init__.py").write_text("raise ImportError(\"No module named 'torch'\")\n")
    result = run_tests(source, *args, header="import pytest\n")
    result.assert_outcomes(**outcomes)
    assert row.message in result.stdout.str().replace("\n", " ") or row.message in result.stdout.str()
    if "cuda" in row.what:  # the skip is reported at the test, not at the plugin's line
        result.stdout.fnmatch_lines(["SKIPPED [[]1[]] test_it.py:2: fake_world(device='cuda')*"])


def readme_rows() -> set[str]:
    return {line.strip() for line in CATALOGUE.read_text().splitlines() if line.startswith("| ")}


@pytest.mark.parametrize("row", MARKER + OPTIONS + [m[0] for m in MISUSE], ids=lambda r: r.what)
def test_catalogue_row_is_in_the_readme(row: Row) -> None:
    assert f"| {row.what} | `{row.written}` | {row.message} |" in readme_rows()


def test_readme_has_no_rows_the_catalogue_lacks() -> None:
    section = CATALOGUE.read_text().split("# Bad input", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if re.match(r"\| (?!what|---)", line)]
    assert len(rows) == len(MARKER) + len(OPTIONS) + len(MISUSE)
