"""Injected faults: every op, "*", the n-th call, at issue and at wait, on the
default group and on sub-groups, and through functional collectives."""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol

from pytest_fakepg import FakeWorld, FakeWorldFaultWarning
from pytest_fakepg.ops import OP_NAMES

from .conftest import RunTests

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

N = 4  # size of the group each op runs on (the world, or a "tp" dimension)


def _coalesced(op: str) -> Callable[[Any, bool], Any]:
    def run(pg: Any, async_op: bool) -> Any:
        # two tensors: see NOTE [One-tensor coalesced calls]
        with dist._coalescing_manager(group=pg, async_ops=async_op) as cm:
            for _ in range(2):
                if op == "all_reduce":
                    dist.all_reduce(torch.ones(2), group=pg)
                elif op == "all_gather_into_tensor":
                    dist.all_gather_into_tensor(torch.zeros(2 * N), torch.ones(2), group=pg)
                else:
                    dist.reduce_scatter_tensor(torch.zeros(1), torch.ones(N), group=pg)
        return cm if async_op else None

    return run


# Each op, issued on `pg`; returns the work when async_op is True.
ISSUE: dict[str, Callable[[Any, bool], Any]] = {
    "all_reduce": lambda pg, a: dist.all_reduce(torch.ones(2), group=pg, async_op=a),
    "all_reduce_coalesced": _coalesced("all_reduce"),
    "all_gather": lambda pg, a: dist.all_gather(
        [torch.zeros(2) for _ in range(N)], torch.ones(2), group=pg, async_op=a
    ),
    "all_gather_into_tensor": lambda pg, a: dist.all_gather_into_tensor(
        torch.zeros(2 * N), torch.ones(2), group=pg, async_op=a
    ),
    "all_gather_coalesced": lambda pg, a: dist.all_gather_coalesced(
        [[torch.zeros(2)] for _ in range(N)], [torch.ones(2)], group=pg, async_op=a
    ),
    "all_gather_into_tensor_coalesced": _coalesced("all_gather_into_tensor"),
    "reduce_scatter": lambda pg, a: dist.reduce_scatter(
        torch.zeros(2), [torch.ones(2) for _ in range(N)], group=pg, async_op=a
    ),
    "reduce_scatter_tensor": lambda pg, a: dist.reduce_scatter_tensor(
        torch.zeros(1), torch.ones(N), group=pg, async_op=a
    ),
    "reduce_scatter_tensor_coalesced": _coalesced("reduce_scatter_tensor"),
    "all_to_all": lambda pg, a: dist.all_to_all(
        [torch.zeros(1) for _ in range(N)], [torch.ones(1) for _ in range(N)], group=pg, async_op=a
    ),
    "all_to_all_single": lambda pg, a: dist.all_to_all_single(
        torch.zeros(N), torch.ones(N), group=pg, async_op=a
    ),
    "broadcast": lambda pg, a: dist.broadcast(torch.ones(2), group_src=0, group=pg, async_op=a),
    "reduce": lambda pg, a: dist.reduce(torch.ones(2), group_dst=0, group=pg, async_op=a),
    "gather": lambda pg, a: dist.gather(
        torch.ones(2), [torch.zeros(2) for _ in range(N)], group_dst=1, group=pg, async_op=a
    ),
    "scatter": lambda pg, a: dist.scatter(
        torch.zeros(2), [torch.ones(2) for _ in range(N)], group_src=1, group=pg, async_op=a
    ),
    "send": lambda pg, a: (dist.isend if a else dist.send)(torch.ones(2), group_dst=0, group=pg),
    "recv": lambda pg, a: (dist.irecv if a else dist.recv)(torch.zeros(2), group_src=0, group=pg),
    "barrier": lambda pg, a: dist.barrier(group=pg, async_op=a),
    "gather_into_tensor": lambda pg, a: dist.gather_single(
        torch.ones(2), torch.zeros(2 * N), group_dst=1, group=pg, async_op=a
    ),
}
# Each op, as a parameter: skipped where this torch has no public function for it.
OPS = [
    pytest.param(op, marks=pytest.mark.skipif(
        op == "gather_into_tensor" and not hasattr(dist, "gather_single"),
        reason="this torch has no dist.gather_single (2.14.1 and 2.15 have it)",
    ))
    for op in OP_NAMES
]


def test_every_op_has_an_issuer() -> None:
    assert set(ISSUE) == set(OP_NAMES)


@pytest.fixture(params=["default", "tp"])
def world_and_pg(request: pytest.FixtureRequest) -> Any:
    # rank 1 of {"dp": 2, "tp": 4}: its tp group is ranks 0..3, group rank 1
    with FakeWorld(8, rank=1, mesh={"dp": 2, "tp": 4}) as world:
        if request.param == "default":
            # the default group has 8 ranks; use a 4-rank group made by new_group
            pg = dist.new_group([0, 1, 2, 3])
        else:
            pg = world.mesh["tp"].get_group()
        yield world, pg


@pytest.mark.parametrize("op", OPS)
def test_fault_at_issue(world_and_pg: Any, op: str) -> None:
    world, pg = world_and_pg
    world.fail(op)
    with pytest.raises(dist.DistBackendError) as info:
        ISSUE[op](pg, False)
    message = str(info.value)
    assert f"injected fault in {op} (call 1 of {op}" in message
    assert world.collectives[-1].failed and world.collectives[-1].op == op


@pytest.mark.parametrize("op", OPS)
def test_fault_at_wait(world_and_pg: Any, op: str) -> None:
    world, pg = world_and_pg
    world.fail(op, at="wait")
    work = ISSUE[op](pg, True)  # issuing succeeds
    assert world.collectives.ops == [op]
    with pytest.raises(dist.DistBackendError, match=f"injected fault in {op} "):
        work.wait()


def test_fault_at_wait_fails_future_and_keeps_outputs() -> None:
    with FakeWorld(4) as world:
        world.fail("all_reduce", at="wait")
        t = torch.ones(2)
        work = dist.all_reduce(t, async_op=True)
        assert work.is_completed() and not work.is_success()
        with pytest.raises(dist.DistBackendError, match="injected fault in all_reduce"):
            work.get_future().wait()
        assert t.tolist() == [1.0, 1.0]  # a failed all_reduce wrote nothing


def test_star_fails_every_collective(world_and_pg: Any) -> None:
    world, pg = world_and_pg
    world.fail("*")
    for op in ("barrier", "send", "all_reduce"):
        with pytest.raises(dist.DistBackendError, match=f"in {op} "):
            ISSUE[op](pg, False)


def test_nth_call_fails_once_counting_across_groups() -> None:
    with FakeWorld(8, mesh={"dp": 2, "tp": 4}) as world:
        world.fail("all_reduce", nth=3)
        tp = world.mesh["tp"].get_group()
        dist.all_reduce(torch.ones(1))  # call 1, default group
        dist.all_reduce(torch.ones(1), group=tp)  # call 2, sub-group
        # the group as the check across ranks names it (#23, point 5), not its number
        with pytest.raises(dist.DistBackendError, match=r"call 3 of all_reduce in this world, group tp of size 4\)"):
            dist.all_reduce(torch.ones(1), group=tp)
        t = torch.ones(1)
        dist.all_reduce(t)  # call 4 succeeds: one-shot
        assert t.item() == 8.0
        assert [r.failed for r in world.collectives] == [False, False, True, False]
        assert [r.group for r in world.collectives] == ["default_pg", "tp", "tp", "default_pg"]
        assert world.collectives[1].group_name == tp.group_name  # the name stays torch's
        assert world.calls("all_reduce") == 4


def test_star_with_nth_counts_every_collective() -> None:
    with FakeWorld(2) as world:
        world.fail("*", nth=2)
        dist.barrier()
        with pytest.raises(dist.DistBackendError, match="in broadcast"):
            dist.broadcast(torch.ones(1), src=0)
        dist.barrier()
        assert world.calls() == world.calls("*") == 3
        assert world.calls("barrier") == 2


def test_marker_style_fail_dict_and_list() -> None:
    with FakeWorld(2, fail={"barrier": 2, "send": 1}):
        dist.barrier()
        with pytest.raises(dist.DistBackendError, match="call 2 of barrier"):
            dist.barrier()
        with pytest.raises(dist.DistBackendError, match="call 1 of send"):
            dist.send(torch.ones(1), 1)
        dist.send(torch.ones(1), 1)
    with FakeWorld(2, fail=["broadcast", "recv"]):
        dist.all_reduce(torch.ones(1))
        for _ in range(2):
            with pytest.raises(dist.DistBackendError):
                dist.broadcast(torch.ones(1), 0)
            with pytest.raises(dist.DistBackendError):
                dist.recv(torch.ones(1), 1)


def test_fail_true_with_fail_at_wait() -> None:
    with FakeWorld(2, fail=True, fail_at="wait"):
        work = dist.all_reduce(torch.ones(1), async_op=True)
        with pytest.raises(dist.DistBackendError):
            work.wait()


def test_faults_arm_and_disarm_while_up() -> None:
    with FakeWorld(2) as world:
        with world.fail("all_reduce"):
            with pytest.raises(dist.DistBackendError):
                dist.all_reduce(torch.ones(1))
        dist.all_reduce(torch.ones(1))  # disarmed on with-exit
        fault = world.fail("barrier")
        fault.disarm()
        dist.barrier()


def test_functional_collective_fails_at_wait() -> None:
    with FakeWorld(4) as world:
        world.fail("all_reduce", at="wait")
        t = funcol.all_reduce(torch.ones(2), "sum", world.pg)
        with pytest.raises(dist.DistBackendError, match="injected fault in all_reduce"):
            funcol.wait_tensor(t)


def test_functional_collective_fails_at_issue_under_its_plain_name() -> None:
    with FakeWorld(4) as world:
        world.fail("all_gather_into_tensor")
        with pytest.raises(dist.DistBackendError, match="in all_gather_into_tensor "):
            funcol.all_gather_tensor(torch.ones(2), 0, world.pg)
        assert world.collectives.ops == ["all_gather_into_tensor"]


@pytest.mark.parametrize(
    ("name", "op"),
    [("all_gather_single", "all_gather_into_tensor"), ("reduce_scatter_single", "reduce_scatter_tensor"),
     ("isend", "send"), ("irecv", "recv")],
)
def test_fail_takes_every_public_name_of_an_op(name: str, op: str) -> None:
    if not hasattr(dist, name):
        pytest.skip(f"this torch has no dist.{name}")
    with FakeWorld(4) as world:
        with world.fail(name):
            with pytest.raises(dist.DistBackendError, match=f"injected fault in {op} "):
                getattr(dist, name)(*ISSUE_ARGS[name]())
        assert world.collectives.ops == [op]
        assert world.collectives.count(name) == world.collectives.count(op) == 1


# Arguments for the public functions that issue an op under another name.
ISSUE_ARGS: dict[str, Callable[[], tuple[Any, ...]]] = {
    "all_gather_single": lambda: (torch.zeros(2 * N), torch.ones(2)),
    "reduce_scatter_single": lambda: (torch.zeros(1), torch.ones(N)),
    "isend": lambda: (torch.ones(2), 1),
    "irecv": lambda: (torch.zeros(2), 1),
}


@pytest.mark.parametrize(
    ("typo", "meant"),
    [("all_gather_singel", "all_gather_single"), ("gather_singel", "gather_single"),
     ("reduce_scater_single", "reduce_scatter_single"), ("all_reduse", "all_reduce")],
)
def test_a_typo_suggests_the_name_it_is_closest_to(typo: str, meant: str) -> None:
    with pytest.raises(ValueError, match=f"unknown collective '{typo}' in fail \\(did you mean '{meant}'\\?\\)"):
        FakeWorld(4, fail=typo)


def test_fail_validates_arguments() -> None:
    with FakeWorld(2) as world:
        with pytest.raises(ValueError, match=r"unknown collective 'allreduce' .*did you mean 'all_reduce'"):
            world.fail("allreduce")
        with pytest.raises(ValueError, match="must be an int >= 1"):
            world.fail("barrier", nth=0)
        with pytest.raises(ValueError, match="at must be one of 'issue', 'wait'"):
            world.fail("barrier", at="later")


def test_a_fault_that_never_fires_is_reported_when_the_world_goes_down() -> None:
    with pytest.warns(FakeWorldFaultWarning) as caught:
        with FakeWorld(2, fail={"all_reduce": 5}) as world:
            dist.all_reduce(torch.ones(1))
            dist.all_reduce(torch.ones(1))
            world.fail("barrier")  # every call: never called either
            with world.fail("send", nth=1):  # disarmed on purpose: not reported
                pass
    assert [str(w.message) for w in caught] == [
        "the fault armed for call 5 of all_reduce never fired: 2 calls of all_reduce were made",
        "the fault armed for every call of barrier never fired: no call of barrier was made after it was armed",
    ]


def test_a_fault_that_fired_is_not_reported(recwarn: pytest.WarningsRecorder) -> None:
    with FakeWorld(2, fail={"barrier": 1}) as world:
        with pytest.raises(dist.DistBackendError):
            dist.barrier()
        world.fail("all_reduce")
        with pytest.raises(dist.DistBackendError):
            dist.all_reduce(torch.ones(1))
    assert not [w for w in recwarn if issubclass(w.category, FakeWorldFaultWarning)]


def test_nth_already_in_the_past_is_refused_when_armed() -> None:
    with FakeWorld(2) as world:
        for _ in range(3):
            dist.barrier()
        with pytest.raises(ValueError, match=r"nth=3 is in the past: 3 calls of barrier were already made .* use nth >= 4"):
            world.fail("barrier", nth=3)
        world.fail("barrier", nth=4).disarm()
        with pytest.raises(ValueError, match=r"nth=2 is in the past: 3 collectives were already made"):
            world.fail("*", nth=2)


def test_a_world_that_is_down_refuses_calls_and_disarm() -> None:
    with FakeWorld(2) as world:
        fault = world.fail("barrier")
        fault.disarm()
    with pytest.raises(RuntimeError, match=r"FakeWorld.calls\(\) needs a running world; this one is down"):
        world.calls()
    with pytest.raises(RuntimeError, match=r"Fault.disarm\(\) needs a running world; this one is down"):
        fault.disarm()
    with pytest.raises(RuntimeError, match=r"FakeWorld.fail\(\) needs a running world"):
        world.fail("barrier")


def test_unfired_faults_under_the_plugin_warn_or_with_strict_fail(run_tests: RunTests) -> None:
    source = """
@pytest.mark.fake_world(2, fail={"all_reduce": 5})
def test_two_calls():
    dist.all_reduce(torch.ones(1))
    dist.all_reduce(torch.ones(1))
"""
    result = run_tests(source)
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines([
        # at the test's line, not the plugin's
        "*/test_it.py:3: FakeWorldFaultWarning: test_it.py::test_two_calls[[]w2-r0[]]: the fault armed for call 5 of "
        "all_reduce never fired: 2 calls of all_reduce were made",
    ])
    result = run_tests(source, "--fake-world-strict")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*the fault armed for call 5 of all_reduce never fired*"])
    result = run_tests(source, "-W", "error::pytest_fakepg.FakeWorldFaultWarning")
    assert result.ret != 0 and "FakeWorldFaultWarning" in result.stdout.str()
