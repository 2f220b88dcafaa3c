"""Values fake tensors carry (NOTE [Values fake tensors carry],
fake/values.py): what the program fixes is known, norms are non-negative,
and checks for non-finite values read "finite", an assumption the world
states; every other value keeps its clear error."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from pytest_fakepg import ExactWorld, FakeWorld
from pytest_fakepg.fake.values import ASSUMPTION


@pytest.fixture
def world():
    with FakeWorld(4, tensors="fake") as w:
        yield w


def unknown(read) -> None:
    with pytest.raises(Exception) as info:
        read()
    assert "tensors='fake'" in "\n".join(getattr(info.value, "__notes__", []))


def test_values_the_program_fixes_are_known(world) -> None:
    assert torch.arange(6).sum().item() == 15
    assert (torch.full((), 2.0) * 3).item() == 6.0
    assert bool(torch.ones(3, dtype=torch.bool).all())
    assert torch.tensor([3, 4]).max().item() == 4
    counts = torch.bincount(torch.arange(12) % 4, minlength=4)  # a balanced routing's counts
    assert [c.item() for c in counts] == [3, 3, 3, 3]
    assert world.assumptions == []


def test_a_value_only_data_decides_stays_unknown(world) -> None:
    weights = torch.randn(4)
    unknown(lambda: weights.sum().item())
    unknown(lambda: (weights > 0).any().item())
    unknown(lambda: (torch.arange(4) + weights).sum().item())  # one unknown input is enough


def test_a_write_the_world_cannot_compute_forgets_the_value_and_its_views(world) -> None:
    t = torch.zeros(4)
    view = t[:2]
    assert view.sum().item() == 0.0
    t.add_(torch.randn(4))
    unknown(lambda: t.sum().item())
    unknown(lambda: view.sum().item())
    t.fill_(1.5)  # a write the world computes: known again
    assert t.sum().item() == 6.0


def test_a_write_it_computes_is_seen_through_views(world) -> None:
    t = torch.zeros(4)
    view = t[1:3]
    t.add_(torch.ones(4))
    assert view.sum().item() == 2.0


def test_norms_are_non_negative_through_a_collective(world) -> None:
    import torch.distributed as dist

    grads = [torch.randn(8), torch.randn(3)]
    total = torch.stack([g.norm() for g in grads]).pow(2).sum()
    dist.all_reduce(total)
    total = total.sqrt()
    assert not bool(total < 0)
    assert bool(total >= 0)
    unknown(lambda: bool(total > 1))  # how large it is, only data decides


def test_finiteness_checks_read_finite_and_the_world_says_so(world) -> None:
    x = torch.randn(5)
    assert world.assumptions == []
    assert bool(torch.isfinite(x).all())
    assert not bool(torch.isnan(x).any()) and not bool(torch.isinf(x).any())
    assert world.assumptions == [ASSUMPTION]


def test_clip_grad_norm_with_error_if_nonfinite_plans(world) -> None:
    model = nn.Linear(8, 8)
    model(torch.randn(2, 8)).sum().backward()
    norm = nn.utils.clip_grad_norm_(model.parameters(), 1.0, error_if_nonfinite=True)
    assert norm.shape == () and not bool(norm < 0)
    assert world.assumptions == [ASSUMPTION]


def test_a_grad_scaler_step_runs_and_keeps_its_scale(world) -> None:
    """GradScaler reads found_inf (known: nothing overflowed) and updates
    its scale and growth tracker from known values: the step is taken."""
    model = nn.Linear(8, 8)
    optimizer = torch.optim.Adam(model.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(torch.randn(2, 8)).float().sum()
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    assert set(optimizer.state[model.weight]) == {"step", "exp_avg", "exp_avg_sq"}  # stepped
    assert scaler.get_scale() == 2048.0  # grown after one finite step (growth_interval=1)
    assert world.assumptions == [ASSUMPTION]


def test_exact_worlds_state_the_assumption_too() -> None:
    with ExactWorld(2, tensors="fake") as world:
        world.run(lambda: bool(torch.isfinite(torch.randn(3)).all()))
        assert world.assumptions == [ASSUMPTION]


def test_the_report_states_the_assumption(run_tests) -> None:
    result = run_tests("""
@pytest.mark.fake_world(2, tensors="fake")
def test_finite():
    assert bool(torch.isfinite(torch.randn(3)).all())
""", "--fake-world-report")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"*assumed: {ASSUMPTION}"])


def test_real_tensors_are_never_written_through_a_known_copy(world) -> None:
    from pytest_fakepg._compat.fake_tensor import unset_fake

    with unset_fake():
        mine = torch.zeros(3)
    view = torch.ones(3) + mine[:]  # a known value made from the caller's real tensor
    view.add_(1)
    assert mine.tolist() == [0.0, 0.0, 0.0]
    assert view.sum().item() == 6.0


def test_fake_views_share_their_base_and_autograd(world) -> None:
    flat = torch.empty(1000)
    memory = world.memory.current
    parts = [flat.narrow(0, i * 100, 100) for i in range(10)]
    assert world.memory.current == memory  # views allocate nothing
    assert all(p._base is flat and p.untyped_storage()._cdata == flat.untyped_storage()._cdata for p in parts)
    assert [p.storage_offset() for p in parts[:3]] == [0, 100, 200]
    w = torch.randn(10, requires_grad=True)
    w.narrow(0, 2, 5).sum().backward()
    assert w.grad.shape == (10,)


def test_a_count_exchange_carries_its_values() -> None:
    """An expert-parallel dispatch sends each rank its token counts with
    all_to_all_single; in a uniform world every rank holds this rank's
    counts, so rank 2 receives, from each of the 4, the counts meant for it."""
    import torch.distributed as dist
    import torch.distributed._functional_collectives as funcol

    with FakeWorld(4, rank=2, tensors="fake"):
        counts = torch.arange(8) + 1  # two local experts a rank: [1, 2 | 3, 4 | 5, 6 | 7, 8]
        received = torch.empty(8, dtype=torch.long)
        dist.all_to_all_single(received, counts)
        assert received.tolist() == [5, 6] * 4
        got = funcol.all_to_all_single(counts, None, None, dist.group.WORLD)
        assert got.tolist() == [5, 6] * 4
        tokens = torch.empty(int(received.sum()), 16)  # the shape the counts fix
        assert tokens.shape == (44, 16)


def test_a_routing_map_of_known_expert_ids_counts_tokens_per_expert(world) -> None:
    """torchtitan's MoE counts tokens per expert from a one-hot map built
    like this: zeros_like(scores) is zeros whatever the scores hold, and a
    map of 4,096 tokens by 256 experts (a million bools) is kept, so its
    counts are known with round-robin expert ids (token t's j-th expert is
    (t * k + j) mod E)."""
    tokens, experts, k = 4096, 256, 8
    scores = torch.randn(tokens, experts)  # unknown
    ids = torch.arange(tokens * k).reshape(tokens, k) % experts
    routing = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, ids, True)
    assert routing.sum(dim=0).tolist() == [tokens * k // experts] * experts
    assert torch.ones_like(scores[:, :2]).sum().item() == tokens * 2
    assert torch.full_like(scores[0], 3.0).sum().item() == 3.0 * experts
    unknown(lambda: scores.sum().item())
    unknown(lambda: torch.zeros(tokens, experts).add(scores).sum().item())


def test_topk_over_fake_scores_routes_evenly_by_default(world) -> None:
    """NOTE [Routing on fake tensors]: row t's j-th index is (t * k + j) mod n."""
    from pytest_fakepg.fake.values import BALANCED

    scores = torch.randn(16, 8)  # unknown: only real data decides them
    indices = torch.topk(scores, 2, dim=-1).indices
    assert indices.tolist() == [[(2 * t) % 8, (2 * t + 1) % 8] for t in range(16)]
    assert torch.bincount(indices.flatten(), minlength=8).tolist() == [4] * 8
    assert BALANCED in world.assumptions
    unknown(lambda: torch.topk(scores, 2).values.sum().item())  # the scores themselves stay unknown


def test_a_test_routes_topk_its_own_way(world) -> None:
    from pytest_fakepg.fake.values import ROUTED

    def hot_expert(rows: int, n: int, k: int) -> torch.Tensor:  # expert 0 takes every token's first choice
        ids = torch.arange(rows * k).reshape(rows, k) % n
        ids[:, 0] = 0
        return ids

    world.route(hot_expert)
    ids = torch.randn(2, 8, 16).topk(2).indices  # (batch, tokens, experts): 16 rows
    # expert 0: every row's first choice; the odd experts: the second choices, twice each
    assert torch.bincount(ids.flatten(), minlength=16).tolist() == [16] + [2 if e % 2 else 0 for e in range(1, 16)]
    assert ROUTED in world.assumptions
    world.route(lambda rows, n, k: torch.zeros(rows, k + 1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"gave \(16, 3\) torch.int64 indices for topk over 16 rows of 16 choices "
                                         r"with k=2; it must give integers of shape \(16, 2\)"):
        torch.randn(2, 8, 16).topk(2)
    world.route(lambda rows, n, k: torch.full((rows, k), n))
    with pytest.raises(ValueError, match=r"gave indices from 16 to 16 for topk over 16 choices; each must be in \[0, 15\]"):
        torch.randn(2, 8, 16).topk(2)
    world.route(lambda rows, n, k: torch.zeros(rows, k, dtype=torch.long))  # every row: expert 0, twice
    with pytest.raises(ValueError, match=r"gave row 0 the indices \[0, 0\], one of them twice; topk picks 2 "
                                         r"different choices of 16 for each row"):
        torch.randn(2, 8, 16).topk(2)
    with pytest.raises(TypeError, match="route\\(\\) takes a function"):
        world.route("balanced")


def test_topk_over_known_values_is_computed_not_assumed(world) -> None:
    from pytest_fakepg.fake.values import BALANCED

    assert torch.arange(8.0).topk(3).indices.tolist() == [7, 6, 5]
    assert BALANCED not in world.assumptions


def test_exact_ranks_exchange_known_counts() -> None:
    """NOTE [Counts exchanged between exact ranks]: an all_to_all_single of
    known counts carries each peer's part, functional or c10d; a part no
    rank knows leaves the output unknown."""
    import torch.distributed as dist
    import torch.distributed._functional_collectives as funcol

    from pytest_fakepg import ExactWorld

    def program() -> tuple[list[int], list[int]]:
        rank = dist.get_rank()
        counts = torch.tensor([rank + 1, 2 * (rank + 1)])  # rank 0: [1, 2], rank 1: [2, 4]
        functional = funcol.all_to_all_single(counts, None, None, dist.group.WORLD)  # waited at once on fake tensors
        out = torch.empty(2, dtype=torch.long)
        dist.all_to_all_single(out, counts * 10)
        weights = torch.randn(2)  # unknown on every rank
        unknown(lambda: funcol.all_to_all_single(weights, None, None, dist.group.WORLD).sum().item())
        return functional.tolist(), out.tolist()

    with ExactWorld(2, tensors="fake") as world:
        assert world.run(program) == [([1, 2], [10, 20]), ([2, 4], [20, 40])]
