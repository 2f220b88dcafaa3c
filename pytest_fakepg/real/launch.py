"""Starting a test's real ranks and judging what they did.

The launcher side runs torchrun (``python -m torch.distributed.run
--standalone``: torch's own launcher and rendezvous) with one process per
rank, each a pytest running this one test with ``--fake-world-real=env``
(plugin/real.py); each rank writes its result as JSON into a folder this
side reads. A rank that hangs is cut by the timeout; a rank that dies
without a result is shown by its output, which torchrun keeps per rank.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import TYPE_CHECKING, Any, NamedTuple

from ..records import ranks_text
from . import OUT_ENV, ledger

if TYPE_CHECKING:
    import pytest

    from ..spec import WorldSpec

# Options of the launching pytest a rank's pytest needs too: plugins, the
# configuration file and what overrides it, and warning filters.
_PASSED_ON = ("-p", "-c", "--config-file", "--rootdir", "-o", "--override-ini", "--confcutdir", "-W",
              "--pythonwarnings", "--import-mode")
_TAIL = 25  # lines of a rank's output shown with its failure


class Outcome(NamedTuple):
    summary: dict[str, Any]  # for the report: real passed/failed/skipped, the ledgers, ranks, seconds
    failure: str | None  # the test's failure message, or None


# -- a rank's side ----------------------------------------------------------------


def _outcome(reports: list[pytest.TestReport]) -> tuple[str, str | None]:
    """(passed/failed/skipped, the first failure's or skip's text)."""
    for report in reports:
        if report.failed:
            return "failed", report.longreprtext
    for report in reports:
        if report.skipped:
            longrepr = report.longrepr
            return "skipped", longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return "passed", None


def rank_result(rank: int, fake: list[pytest.TestReport], real: list[pytest.TestReport],
                fake_ledger: dict[str, Any] | None, real_ledger: dict[str, Any] | None) -> dict[str, Any]:
    """What rank ``rank`` did in its fake world and on the real one; where
    both passed and the ledgers differ, the real call's report is failed."""
    fake_outcome, fake_text = _outcome(fake)
    real_outcome, real_text = _outcome(real)
    difference = None
    compared = fake_outcome == real_outcome == "passed" and fake_ledger is not None and real_ledger is not None
    if compared:
        assert fake_ledger is not None and real_ledger is not None
        difference = ledger.first_difference(fake_ledger, real_ledger)
    if difference is not None:
        message = f"rank {rank}'s ledger on real ranks differs from the fake world's at rank {rank}: {difference}"
        call = next(r for r in real if r.when == "call")
        call.outcome = "failed"
        call.longrepr = message
        real_outcome, real_text = "failed", message
    return {
        "rank": rank,
        "fake": fake_outcome,
        "fake_error": None if fake_text is None else fake_text.strip().splitlines()[-1:],
        "real": real_outcome,
        "error": real_text,
        "ledgers": ("differ" if difference else "agree") if compared else "not compared",
        "calls": None if real_ledger is None else len(real_ledger["calls"]),
    }


def write_result(folder: str, rank: int, result: dict[str, Any]) -> None:
    path = os.path.join(folder, f"rank-{rank}.json")
    with open(path + ".tmp", "w", encoding="utf-8") as fh:
        json.dump(result, fh)
    os.replace(path + ".tmp", path)


# -- the launcher's side ----------------------------------------------------------


def command(config: pytest.Config, nodeid: str, nprocs: int, logs: str, timeout: float) -> list[str]:
    """torchrun running ``nodeid`` as each of ``nprocs`` ranks."""
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
            f"--nproc-per-node={nprocs}", f"--log-dir={logs}", "--redirects=3",
            "-m", "pytest", nodeid, "--fake-world-real=env", f"--fake-world-real-timeout={timeout:g}",
            "-p", "no:cacheprovider", "-q", "--no-header", "-rfEs", f"--rootdir={config.rootpath}",
            # a rank still in the test at half the timeout writes where it is
            # (shown only if the run then fails); the other half covers start-up
            "-o", f"faulthandler_timeout={max(1.0, timeout * 0.5):g}"]
    given = list(config.invocation_params.args)
    for k, arg in enumerate(given):
        name = arg.split("=", 1)[0]
        if name in _PASSED_ON and "=" in arg:
            args.append(arg)
        elif name in _PASSED_ON and k + 1 < len(given):
            args += [arg, given[k + 1]]
        elif arg.startswith("-p") and len(arg) > 2 and not arg.startswith("--"):
            args.append(arg)  # -pNAME
    if config.pluginmanager.hasplugin("xdist"):
        args += ["-n", "0"]  # one test, in this process: never workers of its own
    return args


def run(item: pytest.Item, spec: WorldSpec, backend: str, timeout: float) -> Outcome:
    """Run ``item`` on ``spec.world_size`` real ranks of ``backend``."""
    n = spec.world_size
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pytest-fakepg-real-") as tmp:
        out = os.path.join(tmp, "results")
        os.mkdir(out)
        proc = subprocess.Popen(command(item.config, item.nodeid, n, os.path.join(tmp, "logs"), timeout),
                                cwd=item.config.rootpath, env=_launch_env(out),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        timed_out = False
        try:
            launcher_output = proc.communicate(timeout=timeout)[0]
        except subprocess.TimeoutExpired:
            timed_out = True
            launcher_output = _stop(proc)
        results = {}
        for r in range(n):
            path = os.path.join(out, f"rank-{r}.json")
            if os.path.exists(path):
                with open(path, encoding="utf-8") as fh:
                    results[r] = json.load(fh)
        outputs = {r: _output(tmp, r) for r in range(n) if r not in results}  # a failed rank's result says it all
    seconds = round(time.perf_counter() - started, 1)
    return judge(backend, n, timeout, timed_out, results, outputs, launcher_output, seconds)


def _launch_env(out: str) -> dict[str, str]:
    """This process's environment without the torchrun variables the fake
    world set (torchrun sets its ranks' own), and where ranks write results."""
    from ..environment import torchrun_env

    env = {k: v for k, v in os.environ.items() if k not in torchrun_env(1, 1, 0)}
    env[OUT_ENV] = out
    return env


def _stop(proc: subprocess.Popen[str]) -> str:
    """Stop torchrun (which stops its ranks on SIGTERM), then anything left."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        return proc.communicate(timeout=15)[0]
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return proc.communicate()[0]


def _output(tmp: str, rank: int) -> str:
    """The last lines a rank wrote, stdout then stderr (torchrun keeps them
    per local rank: LOG_DIR/RUN_ID/attempt_N/RANK/)."""
    parts = []
    for stream in ("stdout", "stderr"):
        for path in sorted(glob.glob(os.path.join(tmp, "logs", "*", "attempt_*", str(rank), f"{stream}.log"))):
            with open(path, encoding="utf-8", errors="replace") as fh:
                lines = [line.rstrip() for line in fh if line.strip()]
            # faulthandler's dump (most recent call first) shows where the rank waits
            dumps = [k for k, line in enumerate(lines) if line.startswith("Timeout (")]
            shown = lines[dumps[-1]:dumps[-1] + _TAIL] if dumps else lines[-_TAIL:]
            if dumps:  # down to the test's own frame: pytest's and pluggy's below it say nothing
                cut = next((k for k, line in enumerate(shown) if line.endswith(" in pytest_pyfunc_call")), None)
                shown = shown[:cut]
            if shown:
                parts.append(f"  {stream}:\n" + "\n".join(f"    {line}" for line in shown))
    return "\n".join(parts) or "  (no output)"


def judge(backend: str, n: int, timeout: float, timed_out: bool, results: dict[int, dict[str, Any]],
          outputs: dict[int, str], launcher_output: str, seconds: float) -> Outcome:
    """The test's outcome from its ranks' results."""
    summary: dict[str, Any] = {"fake": "passed", "ranks": n, "seconds": seconds}
    missing = [r for r in range(n) if r not in results]
    problems = []
    if timed_out:
        problems.append(f"the real run did not finish in {timeout:g} s (--fake-world-real-timeout); "
                        f"rank(s) {ranks_text(missing)} never finished" if missing else
                        f"the real run did not finish in {timeout:g} s (--fake-world-real-timeout)")
        problems += [f"rank {r}'s output:\n{outputs[r]}" for r in missing]
    elif missing:
        tail = "\n".join(launcher_output.strip().splitlines()[-_TAIL:])
        problems += [f"rank {r} ended without a result; its output:\n{outputs[r]}" for r in missing]
        problems.append(f"torchrun said:\n{tail}")
    for r, result in sorted(results.items()):
        if result["real"] == "failed":
            error = result["error"] or ""
            if result["ledgers"] == "differ":
                problems.append(error)
            else:
                problems.append(f"rank {r} failed:\n{error.rstrip()}")
    real = {result["real"] for result in results.values()}
    if problems:
        summary["real"] = "failed"
    elif real == {"skipped"}:
        summary["real"] = "skipped"
        summary["reason"] = results[0]["error"]
    else:
        summary["real"] = "passed"
    ledgers = {result["ledgers"] for result in results.values()}
    summary["ledgers"] = ("differ" if "differ" in ledgers else "agree" if ledgers == {"agree"} and not missing
                          else "not compared")
    if not problems:
        return Outcome(summary, None)
    head = f"on {n} real {backend} ranks (torchrun, {seconds:g} s): "
    return Outcome(summary, head + "\n\n".join(problems))
