"""Private torch names are used only in pytest_fakepg/_compat/, where each
shim says the versions it was checked on: one door to torch's internals.

Read statically, module by module: an import of a private torch module or
name, a string naming one (``sys.modules.get("torch...._x")``), or an
attribute ``x._name`` that this package does not define itself (what else
could it be but torch's?) outside _compat/ fails, naming file and line.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "pytest_fakepg"
DOOR = PACKAGE / "_compat"
# Private names of other projects, on purpose and each with its reason.
NOT_TORCHS = {
    "_fixtureinfo": "pytest: a test's fixture closure, to call a test as each rank's program",
    "_inst": "Python's random: the hidden instance whose bound methods the module exports",
    "_getframe": "Python's sys: the frame that issued a collective, for its call site",
    "_testMethodName": "unittest: the test method a TestCase instance runs, to run it as each rank's program",
}
_PRIVATE_MODULE = re.compile(r"\btorch(?:\.\w+)*\._\w+")


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if DOOR not in p.parents)


def _ours() -> set[str]:
    """Every private name the package defines: functions, classes,
    assignments, attributes it sets, parameters."""
    names: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
            elif isinstance(node, ast.alias):
                names.add((node.asname or node.name).split(".")[-1])
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.isidentifier():
                names.add(node.value)  # __slots__, getattr(self, "_x")
    return {n for n in names if n.startswith("_")}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _uses(path: Path, ours: set[str]) -> list[str]:
    found = []
    where = path.name if PACKAGE.parent not in path.parents else path.relative_to(PACKAGE.parent)
    for node in ast.walk(ast.parse(path.read_text())):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import):
            found += [f"{where}:{line} imports {a.name}" for a in node.names
                      if a.name.startswith("torch") and any(map(_private, a.name.split(".")))]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("torch"):
            if any(map(_private, node.module.split("."))):  # type: ignore[union-attr]
                found.append(f"{where}:{line} imports from {node.module}")
            found += [f"{where}:{line} imports {a.name} from {node.module}" for a in node.names if _private(a.name)]
        elif isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in ours:
            if node.attr not in NOT_TORCHS:
                found.append(f"{where}:{line} uses .{node.attr}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _PRIVATE_MODULE.search(node.value):
            found.append(f"{where}:{line} names {_PRIVATE_MODULE.search(node.value).group(0)}")  # type: ignore[union-attr]
    return found


def test_private_torch_names_only_behind_the_door() -> None:
    ours = _ours()
    found = [use for path in _modules() for use in _uses(path, ours)]
    assert not found, "private torch names outside pytest_fakepg/_compat/:\n" + "\n".join(found)


def test_the_check_finds_what_it_looks_for(tmp_path: Path) -> None:
    """The scan flags each kind of use (so the test above can fail)."""
    module = tmp_path / "m.py"
    module.write_text(
        "import torch._C\n"
        "from torch.distributed import _functional_collectives\n"
        "from torch.distributed._tools import x\n"
        "import sys\n"
        "sys.modules.get('torch.distributed.tensor._random')\n"
        "pg._get_backend('cpu')\n"
        "self._mine\n"
    )
    uses = [u.split(" ", 1)[1] for u in _uses(module, {"_mine"})]
    assert uses == [
        "imports torch._C",
        "imports _functional_collectives from torch.distributed",
        "imports from torch.distributed._tools",
        "names torch.distributed.tensor._random",
        "uses ._get_backend",
    ]
