"""Per-test cost of fake worlds under pytest, against the alternatives.

Generates test files into a temporary directory and runs each style in its own
pytest subprocess, with a small timing plugin that measures each test's whole
protocol (setup, call and teardown: everything a harness does for a test).
Reported: the median per test, and the ratio to the hand-written fake test
measured in the same command.

    python benchmarks/bench_pytest.py [--tests 400] [--skip-mp]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

TIMER_PLUGIN = '''
import json, os, time
import pytest

_times = []

@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    start = time.perf_counter()
    yield
    _times.append(time.perf_counter() - start)

def pytest_sessionfinish(session):
    with open(os.environ["BENCH_OUT"], "w") as fh:
        json.dump(_times, fh)
'''

# Installed plugins that are not part of any comparison add their own hooks
# to every test alike; switching them off keeps the figures about harnesses.
QUIET_PLUGINS = ["-p", "no:randomly", "-p", "no:cacheprovider", "-p", "no:xdist", "-p", "no:timeout"]

HEADER = (
    "import pytest, torch, torch.distributed as dist\n"
    "import torch.testing._internal.distributed.fake_pg  # registers torch's \"fake\" backend\n"
)


def body(n: int, template: str) -> str:
    return HEADER + "".join(textwrap.dedent(template).format(i=i) for i in range(n))


STYLES = {
    "bare pytest (no world)": lambda n, ws: body(n, """
        def test_{i}():
            assert 1
        """),
    "hand-written fake": lambda n, ws: body(n, f"""
        def test_{{i}}():
            dist.init_process_group("fake", rank=0, world_size={ws}, store=dist.HashStore())
            try:
                assert dist.get_world_size() == {ws}
            finally:
                dist.destroy_process_group()
        """),
    "fake_world marker": lambda n, ws: body(n, f"""
        @pytest.mark.fake_world({ws})
        def test_{{i}}():
            assert dist.get_world_size() == {ws}
        """),
    "hand-written fake + 2-D mesh": lambda n, ws: body(n, f"""
        from torch.distributed.device_mesh import init_device_mesh
        def test_{{i}}():
            dist.init_process_group("fake", rank=0, world_size={ws}, store=dist.HashStore())
            try:
                mesh = init_device_mesh("cpu", (2, {ws} // 2), mesh_dim_names=("dp", "tp"))
                assert mesh["tp"].size() == {ws} // 2
            finally:
                dist.destroy_process_group()
        """),
    "fake_world marker + 2-D mesh": lambda n, ws: body(n, f"""
        @pytest.mark.fake_world(mesh={{{{"dp": 2, "tp": {ws} // 2}}}})
        def test_{{i}}(device_mesh):
            assert device_mesh["tp"].size() == {ws} // 2
        """),
    "MultiThreadedTestCase": lambda n, ws: body(n, f"""
        from torch.testing._internal.common_distributed import MultiThreadedTestCase
        class TestThreaded(MultiThreadedTestCase):
            @property
            def world_size(self):
                return {ws}
            def setUp(self):
                super().setUp()
                self._spawn_threads()
        """) + "".join(f"    def test_{i}(self):\n        assert dist.get_world_size() == {ws}\n" for i in range(n)),
    "LocalDTensorTestBase": lambda n, ws: body(n, f"""
        from torch.testing._internal.distributed._tensor.common_dtensor import (
            LocalDTensorTestBase, with_comms)
        class TestLocal(LocalDTensorTestBase):
            @property
            def world_size(self):
                return {ws}
        """) + "".join(
            f"    @with_comms\n    def test_{i}(self):\n"
            f"        assert dist.get_world_size() == {ws}\n" for i in range(n)),
    "MultiProcessTestCase (gloo)": lambda n, ws: body(n, f"""
        from torch.testing._internal.common_distributed import MultiProcessTestCase
        class TestProcs(MultiProcessTestCase):
            @property
            def world_size(self):
                return {ws}
            def setUp(self):
                super().setUp()
                self._spawn_processes()
        """) + "".join(
            f"    def test_{i}(self):\n"
            f"        dist.init_process_group('gloo', rank=self.rank, world_size={ws}, init_method=f'file://{{self.file_name}}')\n"
            f"        dist.destroy_process_group()\n" for i in range(n)),
}


EXTRA_ARGS: list[str] = []  # --pytest-args, for every run of every style


def run_style(name: str, n: int, ws: int, workdir: Path) -> list[float]:
    case = Path(tempfile.mkdtemp(dir=workdir))
    (case / "bench_timer.py").write_text(TIMER_PLUGIN)
    (case / "test_bench.py").write_text(STYLES[name](n, ws))
    out = case / "times.json"
    # The timing plugin sits in the case's folder; a PYTHONPATH already set
    # (running from a source tree, as .ci/gpu does) is kept after it.
    path = os.pathsep.join(p for p in (str(case), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "BENCH_OUT": str(out), "PYTHONPATH": path}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "bench_timer", *QUIET_PLUGINS, *EXTRA_ARGS, "-W", "ignore",
           str(case / "test_bench.py")]
    result = subprocess.run(cmd, cwd=case, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    times = json.loads(out.read_text())
    return times[min(len(times) // 10, 5):] or times  # drop warm-up tests


def sweep(workdir: Path, ranks: int = 1024, collect: int = 10_000) -> dict[str, float]:
    """rank="all" over one world: per-case cost against a single marked test
    run in the same command, with the check across ranks on and off (each
    case issues two collectives, so the check has calls to record and
    compare), and the time to collect `collect` cases."""
    import time

    single = statistics.median(run_style("fake_world marker", 300, 4, workdir))
    case = workdir / "sweep"
    case.mkdir()
    (case / "bench_timer.py").write_text(TIMER_PLUGIN)
    (case / "test_sweep.py").write_text(HEADER + textwrap.dedent(f"""
        @pytest.mark.fake_world({ranks}, rank="all")
        def test_sweep(rank):
            dist.all_reduce(torch.ones(4))
            dist.barrier()
        """))
    (case / "test_collect.py").write_text(HEADER + textwrap.dedent(f"""
        @pytest.mark.fake_world({collect}, rank="all")
        def test_collect(rank):
            pass
        """))
    env = {**os.environ, "BENCH_OUT": str(case / "times.json"), "PYTHONPATH": str(case)}
    base = [sys.executable, "-m", "pytest", "-q", *QUIET_PLUGINS, "-W", "ignore"]
    per_case: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(3):  # alternate, so drift hits both alike
        for check in (True, False):
            subprocess.run([*base, "-p", "bench_timer", "-o", f"fake_world_check_ranks={check}", "test_sweep.py"],
                           cwd=case, env=env, check=True, capture_output=True)
            per_case[check].append(statistics.median(json.loads((case / "times.json").read_text())))
    on, off = statistics.median(per_case[True]), statistics.median(per_case[False])
    start = time.perf_counter()
    subprocess.run([*base, "--collect-only", "test_collect.py"], cwd=case, env=env, check=True,
                   capture_output=True)
    collect_s = time.perf_counter() - start
    return {"single_ms": single * 1e3, "per_case_ms": on * 1e3, "per_case_off_ms": off * 1e3,
            "collect_s": collect_s, "ranks": ranks, "collect": collect}


def plugin_cost(tests: int = 3000, rounds: int = 3) -> str:
    """A suite of plain tests with the plugin installed and with -p no:fakepg,
    alternating runs: per-test median and the whole run's wall time."""
    import tempfile
    import time

    results: dict[str, list[tuple[float, float]]] = {"plugin loaded": [], "-p no:fakepg": []}
    with tempfile.TemporaryDirectory() as tmp:
        case = Path(tmp)
        (case / "bench_timer.py").write_text(TIMER_PLUGIN)
        (case / "test_plain.py").write_text("".join(f"def test_{i}():\n    assert 1\n" for i in range(tests)))
        env = {**os.environ, "BENCH_OUT": str(case / "times.json"), "PYTHONPATH": str(case)}
        for _ in range(rounds):
            for name, extra in (("plugin loaded", []), ("-p no:fakepg", ["-p", "no:fakepg"])):
                start = time.perf_counter()
                subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "bench_timer", *QUIET_PLUGINS,
                                *extra, "test_plain.py"],
                               cwd=case, env=env, check=True, capture_output=True)
                wall = time.perf_counter() - start
                med = statistics.median(json.loads((case / "times.json").read_text()))
                results[name].append((med * 1e6, wall))
    lines = [f"| {tests:,} plain tests | µs per test (median of {rounds} runs) | run wall time (s) |", "|---|---|---|"]
    for name, runs in results.items():
        lines.append(f"| {name} | {statistics.median(r[0] for r in runs):.0f} | "
                     f"{statistics.median(r[1] for r in runs):.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tests", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved runs of each style")
    parser.add_argument("--skip-mp", action="store_true", help="skip MultiProcessTestCase (~4-7 s a test)")
    parser.add_argument("--skip-sweep", action="store_true", help="skip the rank='all' sweep")
    parser.add_argument("--pytest-args", default="", help="extra pytest arguments, e.g. '-p no:logging'")
    args = parser.parse_args(argv)
    EXTRA_ARGS[:] = args.pytest_args.split()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for ws in (2, 4):
            runs: dict[str, list[float]] = {}
            for _ in range(args.rounds):
                for name in STYLES:
                    n = args.tests
                    if name.startswith(("MultiThreaded", "LocalDTensor")):
                        n = max(20, args.tests // 10)
                    if name.startswith("MultiProcess"):
                        if args.skip_mp or runs.get(name):
                            continue  # seconds a test: one run is plenty
                        n = 2
                    runs.setdefault(name, []).append(statistics.median(run_style(name, n, ws, Path(tmp))) * 1e3)
            ms = {name: statistics.median(r) for name, r in runs.items()}
            bare = ms["bare pytest (no world)"]
            for name, value in ms.items():
                ref = ms["hand-written fake + 2-D mesh" if "mesh" in name else "hand-written fake"]
                rows.append((ws, name, value, value - bare, value / ref, value / ms["fake_world marker"]))
        sw = None if args.skip_sweep else sweep(Path(tmp))
    lines = [
        "| world | harness | ms per test | ms above bare pytest | vs hand-written fake | vs fake_world marker |",
        "|---|---|---|---|---|---|",
    ]
    for ws, name, value, above, ratio, vs_marker in rows:
        lines.append(f"| {ws} | {name} | {value:.3f} | {above:.3f} | {ratio:.2f}x | {vs_marker:.2f}x |")
    lines += [] if sw is None else [
        "",
        f"Sweep: rank=\"all\" over a world of {sw['ranks']:,}, each case issuing 2 collectives: "
        f"{sw['per_case_ms']:.3f} ms per case with the check across ranks on, {sw['per_case_off_ms']:.3f} ms "
        f"with it off (**{sw['per_case_ms'] / sw['per_case_off_ms']:.2f}x**), against {sw['single_ms']:.3f} ms "
        f"for a single marked test with no collectives in the same command; collecting {sw['collect']:,} "
        f"generated cases (pytest --collect-only, start-up included): {sw['collect_s']:.1f} s.",
    ]
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main()
