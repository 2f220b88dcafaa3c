"""Packaging, as a packager meets it: the source distribution is complete, a
wheel built from it (not from the tree) installs into a fresh virtual
environment beside torch, and its plugin compiles the backend from the
installed sources on first use."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import pytest

import pytest_fakepg

# Minutes of pip and compiler work: CI runs these (--slow), the everyday run skips them.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def run(*cmd: str | Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=900, **kwargs)  # type: ignore[call-overload]
    assert result.returncode == 0, f"{cmd}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python -m build``: the sdist, then a wheel built from that sdist."""
    pytest.importorskip("build")
    # From a copy: building writes pytest_fakepg.egg-info into the tree, which
    # later pytest runs would find as a second installed plugin.
    src = tmp_path_factory.mktemp("src") / "pytest-fakepg"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".tox", "__pycache__", "*.egg-info", "build", "dist", ".ci-cache", ".whl", ".gl",
        ".pytest_cache"))
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "build", "--no-isolation", "--outdir", out, src)
    return out


def test_sdist_holds_what_building_testing_and_reading_need(dists: Path) -> None:
    (sdist,) = dists.glob("*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    csrc = {p.name for p in (ROOT / "csrc").iterdir() if p.is_file()}
    assert {f"csrc/{name}" for name in csrc} <= names
    needed = {"tox.ini", "CHANGELOG.md", "README.md", "LICENSE", "setup.py", "pyproject.toml",
              "tests/conftest.py", "tests/__init__.py", "tests/soak.py", "examples/mlp.py",
              "benchmarks/run.py", ".ci/run", ".ci/clients.txt", "docs/errors.md"}
    assert needed <= names
    assert sdist.name == f"pytest_fakepg-{pytest_fakepg.__version__}.tar.gz"


def test_wheel_from_the_sdist_builds_its_backend_in_a_fresh_venv(dists: Path, tmp_path: Path) -> None:
    (wheel,) = dists.glob("*.whl")
    assert wheel.name.startswith(f"pytest_fakepg-{pytest_fakepg.__version__}-")
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    # torch and the other dependencies come from this environment (a path in
    # a .pth file: the site-packages it names are searched after the fresh
    # venv's own, and their .pth files, such as this checkout's editable
    # install, are not run); the package itself only from the wheel.
    fresh_site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    (fresh_site / "beside.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel)

    (tmp_path / "test_it.py").write_text(
        "import pytest, torch, torch.distributed as dist, pytest_fakepg\n"
        "@pytest.mark.fake_world(4, rank=2)\n"
        "def test_it(collectives):\n"
        "    t = torch.ones(2)\n"
        "    dist.all_reduce(t)\n"
        "    assert t.tolist() == [4.0, 4.0] and collectives.ops == ['all_reduce']\n"
        "    open('imported-from', 'w').write(pytest_fakepg.__file__)\n"
    )
    # Nothing from this run's setup: no source tree on the path, no plugin
    # named by PYTEST_PLUGINS (.ci/gpu sets it) beside the wheel's entry point.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_PLUGINS")}
    env["PYTEST_FAKEPG_CACHE"] = str(tmp_path / "cache")  # a cold build
    # Output capture on, as a user runs it: the one line about the cold build
    # still reaches the terminal.
    result = run(python, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly",
                 "-W", "ignore::FutureWarning", "test_it.py", cwd=tmp_path, env=env)
    assert "1 passed" in result.stdout
    assert (tmp_path / "imported-from").read_text().startswith(str(fresh_site))  # the wheel, not this checkout
    assert "pytest-fakepg: compiling the fakepg c10d backend for torch" in result.stdout + result.stderr
    assert any((tmp_path / "cache").rglob("BUILD_OK"))
