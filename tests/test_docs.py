"""The docs name only what exists: every NOTE a page cites is in the code,
every path of the project a page names is in the tree, and every name of the
package's code that the design pages and the development guide give in
backticks (``exact.runner.run``, ``ExactWorld._rank_program``) resolves."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

import pytest_fakepg

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]
DESIGN = sorted((ROOT / "docs" / "design").rglob("*.md")) + [ROOT / "docs" / "development.md"]
NOTE = re.compile(r"NOTE \[([^\]]+)\]")
PATH = re.compile(r"(?<![\w/.])((?:pytest_fakepg|csrc|tests|benchmarks|examples|docs|\.ci)/[\w./{},-]*[\w}/])")
CODE = re.compile(r"`([A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)+)`")
FILES = (".py", ".md", ".cpp", ".hpp", ".def", ".json", ".toml")


def _notes_in_code() -> set[str]:
    sources = [*(ROOT / "pytest_fakepg").rglob("*.py"), *(ROOT / "csrc").iterdir(), *(ROOT / "tests").glob("*.py")]
    return {_one_line(m) for path in sources if path.is_file() for m in NOTE.findall(path.read_text(errors="replace"))}


def _one_line(note: str) -> str:
    return " ".join(note.replace("#", " ").split())


def _paths(text: str) -> list[str]:
    found = []
    for path in PATH.findall(text):
        brace = re.search(r"\{([^}]*)\}", path)
        found += [path.replace(brace.group(0), part) for part in brace.group(1).split(",")] if brace else [path]
    return found


def _resolves(dotted: str) -> bool:
    """``dotted`` names a module of the package, or an attribute of one (or
    of a public class): ``exact.runner.run``, ``_compat.c10d.x``,
    ``ExactWorld._rank_program``."""
    if dotted.endswith(FILES):  # a file of the package: exact/world.py
        return any(path.name == dotted for path in (ROOT / "pytest_fakepg").rglob("*")) or \
            (ROOT / "pytest_fakepg" / dotted).exists() or not dotted.endswith(".py")
    head, *rest = dotted.split(".")
    obj = getattr(pytest_fakepg, head, None) if head[:1].isupper() else None
    if obj is None:
        try:
            obj = importlib.import_module(f"pytest_fakepg.{head}")
        except ImportError:
            # A private module name can only be the package's; another name
            # is torch's or Python's, not this check's.
            return not head.startswith("_")
    for part in rest:
        if hasattr(obj, part):
            obj = getattr(obj, part)
            continue
        try:
            obj = importlib.import_module(f"{obj.__name__}.{part}")
        except (AttributeError, ImportError):
            return False
    return True


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_note_and_path_a_page_names_exists(page: Path) -> None:
    text = page.read_text()
    notes = _notes_in_code()
    assert [n for n in map(_one_line, NOTE.findall(text)) if n not in notes] == []
    assert [p for p in _paths(text) if not (ROOT / p.rstrip("/")).exists()] == []


@pytest.mark.parametrize("page", DESIGN, ids=lambda p: str(p.relative_to(ROOT)))
def test_design_pages_name_only_code_that_exists(page: Path) -> None:
    assert [name for name in CODE.findall(page.read_text()) if not _resolves(name)] == []


def test_the_checks_find_what_they_look_for() -> None:
    assert not _resolves("exact.runner.no_such_function")
    assert not _resolves("ExactWorld._no_such_method")
    assert not _resolves("_exact.run")  # a module that no longer exists
    assert _resolves("exact.runner.run") and _resolves("_compat.c10d.install_thread_local_world")
    assert _paths("see csrc/backend.{hpp,cpp} and `pytest_fakepg/_sharding.py`") == [
        "csrc/backend.hpp", "csrc/backend.cpp", "pytest_fakepg/_sharding.py"]
    assert "Sharing rank-free work" in _notes_in_code() and "No such note" not in _notes_in_code()
