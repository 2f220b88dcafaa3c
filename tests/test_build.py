"""The compiled backend's cache: keyed by torch and sources, trusted only when
complete, and a clear message when there is no compiler."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pytest_fakepg import _backend


@pytest.fixture
def cache_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private cache holding a copy of this run's finished build."""
    built = _backend.build_dir()
    monkeypatch.setenv(_backend.CACHE_ENV, str(tmp_path))
    target = _backend.build_dir()
    shutil.copytree(built, target)
    return target


def test_cache_dir_is_keyed_by_torch_python_and_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_backend.CACHE_ENV, str(tmp_path))
    directory = _backend.build_dir()
    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    portable = "-portable" if _backend.portable_build() else ""
    assert directory.parent == tmp_path / f"torch-{torch.__version__}-{py}{portable}"
    assert directory.name == _backend._source_hash(_backend.sources_dir())
    assert len(directory.name) == 16


def test_source_hash_changes_with_the_sources(tmp_path: Path) -> None:
    src = tmp_path / "csrc"
    shutil.copytree(_backend.sources_dir(), src)
    before = _backend._source_hash(src)
    with open(src / "backend.cpp", "a") as fh:
        fh.write("\n// changed\n")
    assert _backend._source_hash(src) != before


def test_source_hash_changes_with_the_compiler_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    before = _backend._source_hash(_backend.sources_dir())
    monkeypatch.setattr(_backend, "_CFLAGS", ("-O3", "-g0"))
    assert _backend._source_hash(_backend.sources_dir()) != before


def test_finished_build_is_trusted(cache_copy: Path) -> None:
    assert _backend._cache_is_valid(cache_copy)


def test_truncated_library_is_not_loaded(cache_copy: Path) -> None:
    so = _backend._so_path(cache_copy)
    so.write_bytes(so.read_bytes()[: so.stat().st_size // 2])
    assert not _backend._cache_is_valid(cache_copy)


def test_same_size_corruption_is_not_loaded(cache_copy: Path) -> None:
    so = _backend._so_path(cache_copy)
    data = bytearray(so.read_bytes())
    data[len(data) // 2] ^= 0xFF
    so.write_bytes(bytes(data))
    assert not _backend._cache_is_valid(cache_copy)


@pytest.mark.parametrize("marker", [None, "", "garbage", "12 abc"])
def test_missing_or_bad_marker_means_unfinished(cache_copy: Path, marker: str | None) -> None:
    path = cache_copy / _backend._DONE_MARKER
    if marker is None:
        path.unlink()
    else:
        path.write_text(marker)
    assert not _backend._cache_is_valid(cache_copy)


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env}, timeout=300
    )


def test_no_compiler_says_what_is_missing_and_what_still_works(tmp_path: Path) -> None:
    result = run_python(
        "from pytest_fakepg import FakeWorld\nFakeWorld(2).start()",
        CXX="/nonexistent/c++",
        PYTEST_FAKEPG_CACHE=str(tmp_path),
    )
    assert result.returncode == 1
    assert "BuildError: pytest-fakepg needs a C++ compiler to build its fakepg backend" in result.stderr
    assert "'/nonexistent/c++'" in result.stderr
    assert "backend='fake'" in result.stderr and "--fake-world-backend=fake" in result.stderr
    assert not any(tmp_path.iterdir())  # nothing half-built left behind


def test_no_compiler_still_runs_the_stock_backend(tmp_path: Path) -> None:
    result = run_python(
        "import torch, torch.distributed as dist\n"
        "from pytest_fakepg import FakeWorld\n"
        "with FakeWorld(2, backend='fake'):\n"
        "    t = torch.ones(1); dist.all_reduce(t); print('ok', t.item())",
        CXX="/nonexistent/c++",
        PYTEST_FAKEPG_CACHE=str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok 1.0"


def test_prebuild_command_reports_the_cache() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest_fakepg", "build"], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"fakepg backend ready in {_backend.build_dir()} (")
    where = subprocess.run([sys.executable, "-m", "pytest_fakepg", "where"], capture_output=True, text=True)
    assert where.stdout.splitlines() == [
        f"cache root:      {_backend.cache_root()}",
        f"build directory: {_backend.build_dir()}",
    ]


@pytest.mark.parametrize("args", [[], ["--help"]])
def test_the_command_without_a_command_prints_its_help(args: list[str]) -> None:
    result = subprocess.run([sys.executable, "-m", "pytest_fakepg", *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m pytest_fakepg [-h] {build,where}")
    assert "python -m pytest_fakepg build   compile the backend" in result.stdout
    assert "`" not in result.stdout


def test_the_plugin_loads_where_fcntl_does_not_exist(tmp_path: Path) -> None:
    """fcntl is POSIX-only: importing it when pytest loads the plugin would
    break every pytest run on Windows."""
    result = run_python(
        "import sys; sys.modules['fcntl'] = None  # as on Windows\n"
        "import pytest_fakepg.plugin, pytest_fakepg._backend as b\n"
        "with b._build_lock(b.cache_root() / 'x'): print('locked')",
        PYTEST_FAKEPG_CACHE=str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "locked"


@pytest.mark.slow  # two cold builds at once, then a third: minutes on 2 cores
def test_concurrent_cold_builds_share_one_cache_and_corruption_is_rebuilt(tmp_path: Path) -> None:
    """Two processes building at once (xdist workers, parallel CI jobs) both
    succeed with one build; a corrupted library is then rebuilt, not loaded."""
    env = {**os.environ, _backend.CACHE_ENV: str(tmp_path)}
    cmd = [sys.executable, "-m", "pytest_fakepg", "build"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    compiled = [err.count("pytest-fakepg: compiling the fakepg c10d backend") for _, err in outputs]
    assert sorted(compiled) == [0, 1]  # one built, the other waited and loaded it
    portable = "-portable" if _backend.portable_build() else ""
    parent = tmp_path / f"torch-{torch.__version__}-py{sys.version_info.major}{sys.version_info.minor}{portable}"
    (entry,) = [p for p in parent.iterdir() if p.is_dir()]  # one build; its lock file sits beside it
    so = next(entry.glob("*.so"))
    so.write_bytes(so.read_bytes()[:4096])  # a half-written library

    result = subprocess.run(
        [sys.executable, "-c", "from pytest_fakepg import FakeWorld\nwith FakeWorld(2) as w: print(w.collectives)"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    # Each message on a line of its own (pytest's progress line may be half
    # written when the first world compiles), and the build says it is done.
    assert re.search(r"(^|\n)\npytest-fakepg: compiling the fakepg c10d backend", result.stderr), result.stderr
    assert re.search(r"\npytest-fakepg: the fakepg c10d backend is built \(\d+ s\)\n", result.stderr), result.stderr
    assert result.stdout.strip() == "<CollectiveLog of 0 collectives>"


def test_python_and_cpp_read_one_op_table() -> None:
    """ops.OP_NAMES (read at collection, without torch) and the compiled
    fakepg::Op come from csrc/ops.def; the codes a record carries agree."""
    from pytest_fakepg.ops import OP_NAMES

    assert OP_NAMES[:3] == ("all_reduce", "all_reduce_coalesced", "all_gather")
    assert tuple(_backend.load().op_names()) == OP_NAMES


def test_the_module_says_which_platform_layer_it_was_built_with() -> None:
    """csrc/platform.hpp: the tuned Linux layer, or the standard-library one
    that other systems get and PYTEST_FAKEPG_PORTABLE=1 forces (CI runs the
    exact-world tests on both)."""
    expected = "portable" if _backend.portable_build() or not sys.platform.startswith("linux") else "linux"
    assert _backend.load().platform() == expected
    assert _backend.build_dir().parent.name.endswith("-portable") == (expected == "portable")


@pytest.mark.parametrize("value", ["yes", "2"])
def test_a_portable_setting_that_is_not_0_or_1_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("PYTEST_FAKEPG_PORTABLE", value)
    with pytest.raises(_backend.BuildError, match=f"PYTEST_FAKEPG_PORTABLE must be 1 .portable build., 0 or unset; got '{value}'"):
        _backend.build_dir()
