"""Foreign state and the tools people run: whatever a test does to torch's
distributed state or the environment, the next test gets a clean world; and
the plugin works under pytest-xdist, pytest-randomly and pytest-timeout."""

from __future__ import annotations

import pytest

from .conftest import RunTests

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

HEADER = """
import os, time, pytest, torch, torch.distributed as dist
import torch.testing._internal.distributed.fake_pg  # registers "fake" for tests that build their own group
from torch.distributed.device_mesh import init_device_mesh, _mesh_resources

def assert_pristine():
    assert not dist.is_initialized()
    assert not dist.distributed_c10d._world.pg_map
    assert not _mesh_resources.mesh_stack
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR"):
        assert name not in os.environ, name
"""


def test_environment_set_by_a_test_is_restored(run_tests: RunTests) -> None:
    result = run_tests("""
@pytest.mark.fake_world(4, rank=2)
def test_a_sets_env():
    os.environ.update(RANK="2", WORLD_SIZE="4", MASTER_ADDR="10.0.0.1")

def test_b_clean():
    assert_pristine()
""", header=HEADER)
    result.assert_outcomes(passed=2)


def test_own_group_and_mesh_without_marker_are_cleaned_up(run_tests: RunTests) -> None:
    result = run_tests("""
def test_a_builds_its_own():
    dist.init_process_group("fake", rank=1, world_size=4, store=dist.HashStore())
    init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))

@pytest.mark.fake_world(mesh={"x": 3})
def test_b_gets_its_world():
    assert dist.get_world_size() == 3 and dist.get_backend() == "fakepg"

def test_c_clean():
    assert_pristine()
""", header=HEADER)
    result.assert_outcomes(passed=3, warnings=1)
    result.stdout.fnmatch_lines(["*test_a_builds_its_own left a default process group behind (backend 'fake', world size 4)*"])


def test_destroying_the_world_inside_the_test_is_fine(run_tests: RunTests) -> None:
    result = run_tests("""
@pytest.mark.fake_world(2, mesh=(2,))
def test_a_destroys():
    dist.destroy_process_group()

@pytest.mark.fake_world(2)
def test_b_fresh_world():
    assert dist.get_world_size() == 2

def test_c_clean():
    assert_pristine()
""", header=HEADER)
    result.assert_outcomes(passed=3)


def test_a_mesh_kept_from_an_earlier_world_fails_loudly(run_tests: RunTests) -> None:
    result = run_tests("""
@pytest.fixture(scope="module")
def kept():
    return {}

@pytest.mark.fake_world(mesh={"dp": 2, "tp": 2})
def test_a_keeps_mesh(kept, device_mesh):
    kept["mesh"] = device_mesh

@pytest.mark.fake_world(mesh={"dp": 2, "tp": 2})
def test_b_uses_stale_mesh(kept):
    with pytest.raises(RuntimeError, match="Could not resolve the process group registered under the name"):
        dist.all_reduce(torch.ones(1), group=kept["mesh"].get_group("tp"))
""", header=HEADER)
    result.assert_outcomes(passed=2)


def test_timeout_still_tears_the_world_down(run_tests: RunTests) -> None:
    pytest.importorskip("pytest_timeout")
    result = run_tests("""
@pytest.mark.timeout(1, method="signal")
@pytest.mark.fake_world(4, mesh={"dp": 2, "tp": 2})
def test_a_hangs():
    time.sleep(30)

def test_b_clean():
    assert_pristine()
""", header=HEADER)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*Timeout*"])


def test_xdist_loadgroup(run_tests: RunTests) -> None:
    pytest.importorskip("xdist")
    result = run_tests("""
@pytest.mark.xdist_group("a")
@pytest.mark.fake_world([2, 4], rank="all")
def test_sweep(rank, world_size):
    assert (dist.get_rank(), dist.get_world_size()) == (rank, world_size)

@pytest.mark.xdist_group("b")
@pytest.mark.fake_world(mesh={"dp": 2, "tp": 2}, fail={"all_reduce": 1})
def test_fault(device_mesh):
    with pytest.raises(dist.DistBackendError):
        dist.all_reduce(torch.ones(1), group=device_mesh.get_group("tp"))

def test_clean():
    assert_pristine()
""", "-n", "2", "--dist", "loadgroup", header=HEADER)
    result.assert_outcomes(passed=8)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_order(pytester: pytest.Pytester, seed: int) -> None:
    pytest.importorskip("pytest_randomly")
    source = "".join(f"""
@pytest.mark.fake_world({2 + i % 3}, rank=-1, mesh={"None" if i % 2 else "(-1,)"})
def test_marked_{i}(rank, world_size):
    assert dist.get_rank() == rank == world_size - 1

def test_plain_{i}():
    assert_pristine()
""" for i in range(10))
    pytester.makepyfile(test_it=HEADER + source)
    result = pytester.runpytest_subprocess("-W", "ignore::FutureWarning", "-p", "randomly", "-p", "no:cacheprovider", f"--randomly-seed={seed}")
    result.assert_outcomes(passed=20)
    result.stdout.fnmatch_lines([f"Using --randomly-seed={seed}"])


def test_a_world_leaves_sys_excepthook_as_it_found_it(run_tests: RunTests) -> None:
    """init_process_group wraps sys.excepthook with a rank prefix; after many
    worlds a traceback would read [rank2]: [rank1]: ... and in the end recurse.
    (Torch's stock backend always goes through init_process_group; fakepg
    worlds do only until their default group is checked, NOTE [compat: default
    group made directly].)"""
    result = run_tests("""
import sys
HOOK = sys.excepthook

@pytest.mark.fake_world(4, rank="all", backend="fake")
def test_stock(rank):
    assert sys.excepthook is not HOOK  # torch's wrapper, while the world is up

@pytest.mark.fake_world(4, rank="all")
def test_fakepg(rank):
    pass

@pytest.mark.fake_world(4, values="exact")
def test_exact(rank):
    pass

def test_after():
    assert sys.excepthook is HOOK
""", header=HEADER)
    result.assert_outcomes(passed=10)


def test_pytest_current_test_is_left_to_pytest(run_tests: RunTests) -> None:
    result = run_tests("""
@pytest.mark.fake_world(2)
def test_world():
    assert os.environ["PYTEST_CURRENT_TEST"].endswith("test_world[w2-r0] (call)")

def test_after_teardown():
    pass
""", "-p", "no:cacheprovider", header=HEADER + """
def pytest_runtest_logfinish(nodeid, location):
    # pytest removed its variable after teardown; a world must not put it back
    assert "PYTEST_CURRENT_TEST" not in os.environ, nodeid
""")
    result.assert_outcomes(passed=2)


def test_stock_fake_sub_groups_inside_a_fakepg_world(run_tests: RunTests) -> None:
    """torchtitan asks backend_override='fake' for size-1 mesh dimensions:
    inside a fakepg world such groups run on fakepg (recorded, faulted), in
    any test order, without anyone importing torch's fake_pg module first."""
    result = run_tests("""
import torch, torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

@pytest.mark.fake_world(4, rank=1)
def test_new_group_on_fake(collectives):
    pg = dist.new_group([0, 1], backend="fake")
    t = torch.ones(2)
    dist.all_reduce(t, group=pg)
    assert t.tolist() == [2.0, 2.0]  # fakepg's uniform values, not a copy
    assert collectives[-1].ranks == (0, 1)

@pytest.mark.fake_world(4, rank=3, fail={"all_reduce": 1})
def test_mesh_with_fake_override(collectives):
    mesh = init_device_mesh("cpu", (1, 4), mesh_dim_names=("pp", "dp"), backend_override={"pp": "fake"})
    with pytest.raises(dist.DistBackendError):
        dist.all_reduce(torch.ones(1), group=mesh["pp"].get_group())
    assert collectives.ops == ["all_reduce"] and collectives[0].ranks == (3,)

def test_fake_is_torchs_again_outside():
    import torch.testing._internal.distributed.fake_pg  # noqa: F401
    dist.init_process_group("fake", rank=0, world_size=2, store=dist.HashStore())
    try:
        t = torch.ones(1)
        dist.all_reduce(t)
        assert t.item() == 1.0  # torch's stock copy semantics
    finally:
        dist.destroy_process_group()
""", header="import pytest\n")
    result.assert_outcomes(passed=3)


def test_compiled_code_across_twenty_worlds(run_tests: RunTests) -> None:
    """A module-level compiled function guards on the world's group; without
    a reset, the ninth world hits dynamo's recompile limit."""
    source = """
import torch._dynamo
import torch.distributed._functional_collectives as funcol

@torch.compile(fullgraph=True, backend="eager")
def reduce_twice(x):
    return funcol.all_reduce(x, "sum", dist.group.WORLD) * 2
""" + "".join(f"""
@pytest.mark.fake_world(4)
def test_{i}():
    assert reduce_twice(torch.ones(2)).tolist() == [8.0, 8.0]
""" for i in range(20))
    result = run_tests(source)
    result.assert_outcomes(passed=20)
