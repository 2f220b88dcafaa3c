"""The soak: a generated suite of marked tests (world sizes 1 to 4,096, ranks,
1-D to 3-D meshes named and unnamed, both value semantics, faults armed and
fired, tests that fail and tests that error) run in random order. Every test
must start on a pristine torch distributed state, end as it would alone, and
memory must stay flat. CI runs 300 tests; the full soak is

    python -m pytest tests/test_soak.py --soak-tests=10000 -p no:xdist -s
"""

from __future__ import annotations

import json
import os

import pytest

from .soak import generate


def test_soak(pytester: pytest.Pytester, request: pytest.FixtureRequest) -> None:
    pytest.importorskip("pytest_randomly")  # the suite runs in random order
    tests = request.config.getoption("--soak-tests")
    expected = generate(pytester.path, tests, seed=20261126)
    out = pytester.path / "soak.json"
    os.environ["SOAK_OUT"] = str(out)
    try:
        result = pytester.runpytest_subprocess(
            "-q", "-p", "randomly", "--randomly-seed=7", "-p", "no:cacheprovider",
            "-W", "ignore::FutureWarning", "-W", "ignore::UserWarning",
        )
    finally:
        del os.environ["SOAK_OUT"]
    report = json.loads(out.read_text())
    counts = {k: list(expected.values()).count(k) for k in ("passed", "failed", "error")}
    result.assert_outcomes(passed=counts["passed"], failed=counts["failed"], errors=counts["error"])
    assert report["violations"] == []
    assert report["outcomes"] == expected
    growth = report["rss_end"] - report["rss_after_100"]
    print(f"\nsoak: {tests} tests ({counts}), leaks found: {len(report['violations'])}, "
          f"memory after 100 tests {report['rss_after_100']:.0f} MB, at the end {report['rss_end']:.0f} MB "
          f"(growth {growth:+.1f} MB)")
    assert growth < 50
