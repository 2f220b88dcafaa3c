"""Build, load and register the compiled ``fakepg`` c10d backend.

The extension is compiled on first use for the exact torch that is installed
(a c10d ``Backend`` built for another torch breaks silently: its vtable moves
between releases) into a cache directory keyed by torch version, Python version
and a hash of the sources. A warm start imports the cached module directly and
costs milliseconds; only a cold start runs the compiler.

Set ``PYTEST_FAKEPG_CACHE`` to choose the cache directory (default:
``$XDG_CACHE_HOME/pytest-fakepg`` or ``~/.cache/pytest-fakepg``).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from . import _compat

BACKEND_NAME = "fakepg"
# The device types the backend is registered for: what a world may run on.
DEVICES = ("cpu", "cuda")
CACHE_ENV = "PYTEST_FAKEPG_CACHE"
# PYTEST_FAKEPG_PORTABLE=1 builds the standard-library version of what exact
# worlds need of the OS (csrc/platform.hpp) even on Linux, into its own cache.
PORTABLE_ENV = "PYTEST_FAKEPG_PORTABLE"
_CSRC = Path(__file__).resolve().parent / "csrc"
_SOURCE_SUFFIXES = (".hpp", ".cpp", ".def")
_DONE_MARKER = "BUILD_OK"

_module: ModuleType | None = None
_registered = False


class BuildError(RuntimeError):
    """The fakepg backend could not be compiled or loaded."""


def sources_dir() -> Path:
    """Where csrc/ is: inside the package in an installed wheel, beside it in
    a source checkout."""
    if _CSRC.is_dir():
        return _CSRC
    return Path(__file__).resolve().parent.parent / "csrc"


def source_files(src: Path) -> list[Path]:
    """Every file the build reads, in a stable order."""
    return sorted(p for p in src.iterdir() if p.suffix in _SOURCE_SUFFIXES)


# The compiler flags every build uses; part of the build's key.
_CFLAGS = ("-O2", "-g0")


def _source_hash(src: Path) -> str:
    h = hashlib.sha256(" ".join(_CFLAGS).encode())
    for path in source_files(src):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def cache_root() -> Path:
    """The cache every build lives under: $PYTEST_FAKEPG_CACHE, else
    $XDG_CACHE_HOME/pytest-fakepg or ~/.cache/pytest-fakepg."""
    root = os.environ.get(CACHE_ENV)
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "pytest-fakepg"


def build_dir() -> Path:
    """The directory the extension for this torch and these sources lives in."""
    import torch

    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    portable = "-portable" if portable_build() else ""
    return cache_root() / f"torch-{torch.__version__}-{py}{portable}" / _source_hash(sources_dir())


def portable_build() -> bool:
    """Whether PYTEST_FAKEPG_PORTABLE asks for the portable build (1), or
    not (unset, empty or 0); anything else is an error naming the values."""
    value = os.environ.get(PORTABLE_ENV, "")
    if value not in ("", "0", "1"):
        raise BuildError(f"{PORTABLE_ENV} must be 1 (portable build), 0 or unset; got {value!r}")
    return value == "1"

def _module_name(directory: Path) -> str:
    return f"pytest_fakepg_C_{directory.name}"


def _so_path(directory: Path) -> Path:
    # cpp_extension.load names the library after the module, with a plain .so
    return directory / f"{_module_name(directory)}.so"


def _import_built(directory: Path) -> ModuleType:
    name = _module_name(directory)
    spec = importlib.util.spec_from_file_location(name, _so_path(directory))
    if spec is None or spec.loader is None:
        raise ImportError(f"no loadable module at {_so_path(directory)}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[name] = module
    return module


def _cache_is_valid(directory: Path) -> bool:
    """A build is trusted only when its marker names the library's exact size
    and digest: a half-written or corrupted .so is rebuilt, never loaded."""
    marker = directory / _DONE_MARKER
    so = _so_path(directory)
    if not (marker.is_file() and so.is_file()):
        return False
    try:
        size, digest = marker.read_text().split()
    except ValueError:
        return False
    if int(size) != so.stat().st_size:
        return False
    return digest == _file_digest(so)


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _find_compiler() -> str | None:
    cxx = os.environ.get("CXX", "c++")
    return shutil.which(cxx)


@contextlib.contextmanager
def _build_lock(directory: Path) -> Iterator[None]:
    """One builder per cache entry across processes (pytest-xdist workers,
    parallel CI jobs): the others wait, then find the finished build."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl  # POSIX; imported here so the plugin loads on Windows too
    except ImportError:  # pragma: no cover - Windows: one build at a time is up to you
        yield
        return
    with open(directory.parent / f"{directory.name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _remove_outputs(directory: Path) -> None:
    """Forget an unfinished or corrupted build. ninja would otherwise trust
    outputs newer than their sources and link or load them again."""
    for path in directory.glob("*"):
        if path.suffix in (".so", ".o", ".ninja") or path.name in (_DONE_MARKER, ".ninja_log", ".ninja_deps"):
            path.unlink(missing_ok=True)


def build(*, verbose: bool = False, quiet: bool = False) -> Path:
    """Compile the extension into the cache (if it is not there) and return
    its directory. Safe to call from several processes at once."""
    directory = build_dir()
    if _cache_is_valid(directory):
        return directory
    if _find_compiler() is None:
        raise BuildError(
            "pytest-fakepg needs a C++ compiler to build its fakepg backend "
            f"(looked for {os.environ.get('CXX', 'c++')!r}; set CXX or install "
            "g++). Worlds that need none of fakepg's features still run on "
            "torch's stock backend: pass backend='fake' (or run pytest with "
            "--fake-world-backend=fake)."
        )
    with _build_lock(directory):
        if not _cache_is_valid(directory):  # another process may have built it meanwhile
            _compile(directory, verbose=verbose, quiet=quiet)
    return directory


def _compile(directory: Path, *, verbose: bool, quiet: bool) -> None:
    import torch
    from torch.utils import cpp_extension

    directory.mkdir(parents=True, exist_ok=True)
    _remove_outputs(directory)
    started = time.perf_counter()
    if not quiet:
        # Under pytest the plugin suspends output capture around the first
        # load, so these lines reach the terminal (plugin/worlds.py,
        # load_backend); each starts a line of its own, since pytest's
        # progress line may be half written.
        print(
            f"\npytest-fakepg: compiling the fakepg c10d backend"
            f"{' (portable build)' if portable_build() else ''} for torch "
            f"{torch.__version__}, once per torch (about 50 s on 2 idle cores, longer while they are busy), into {directory}",
            file=sys.stderr,
            flush=True,
        )
    src = sources_dir()
    try:
        cpp_extension.load(
            name=_module_name(directory),
            sources=[str(p) for p in source_files(src) if p.suffix == ".cpp"],
            extra_cflags=[*_CFLAGS, *(["-DFAKEPG_PORTABLE"] if portable_build() else [])],
            extra_include_paths=[str(src)],
            build_directory=str(directory),
            with_cuda=False,
            is_python_module=True,
            verbose=verbose,
        )
    except Exception as exc:  # compiler errors, missing headers, ...
        raise BuildError(
            f"pytest-fakepg could not build its fakepg backend for torch "
            f"{torch.__version__} in {directory} ({_compat.tested_text()}): {exc}"
        ) from exc
    # The marker goes last, after the library is complete, and names its size
    # and digest: see _cache_is_valid.
    so = _so_path(directory)
    tmp = directory / f"{_DONE_MARKER}.{os.getpid()}"
    tmp.write_text(f"{so.stat().st_size} {_file_digest(so)}\n")
    os.replace(tmp, directory / _DONE_MARKER)
    if not quiet:
        print(
            f"pytest-fakepg: the fakepg c10d backend is built ({time.perf_counter() - started:.0f} s)",
            file=sys.stderr,
            flush=True,
        )


def is_loaded() -> bool:
    return _module is not None


def load() -> ModuleType:
    """The compiled module, built first if needed. Cached per process."""
    global _module
    if _module is not None:
        return _module
    import torch.distributed  # noqa: F401  (registers c10d's pybind types)

    directory = build_dir()
    if not _cache_is_valid(directory):
        directory = build()
    _module = _import_built(directory)
    return _module


def register(creator: Callable[[Any, Any], Any]) -> None:
    """Register ``fakepg`` with torch.distributed, its groups made by
    ``creator`` (idempotent: the first creator stays)."""
    global _registered
    if _registered:
        return
    import torch.distributed as dist

    load()
    dist.Backend.register_backend(BACKEND_NAME, creator, extended_api=True, devices=list(DEVICES))
    _compat.c10d.skip_flight_recorder_hook(BACKEND_NAME)
    _registered = True
