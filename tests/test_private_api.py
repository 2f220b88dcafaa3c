"""Private names of torch, pytest and Python are used, and what the package
patches is patched, only in pytest_fakepg/_compat/, where each shim says the
versions it was checked on: one door to what others may change.

Read statically, module by module, outside _compat/: an import of a private
module or name of torch or pytest, a string naming one
(``sys.modules.get("torch...._x")``), an attribute ``x._name`` that this
package does not define itself (what else could it be but another
project's?), and a patch of a private name (``x._name = ...`` on anything
but ``self`` or ``cls``, ``setattr(x, "_name", ...)``, a write through
``vars(x)``) fail, naming file and line.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "pytest_fakepg"
DOOR = PACKAGE / "_compat"
_PRIVATE_MODULE = re.compile(r"\b(?:torch(?:\.\w+)*\._\w+|_pytest\b)")
_PRIVATE_PACKAGES = ("torch", "_pytest")
# Private names the package gives other objects (a test method's wrapper).
OURS = ("_fakepg", "_pytest_fakepg")


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if DOOR not in p.parents)


def _ours() -> set[str]:
    """Every private name the package defines: functions, classes,
    assignments, attributes it sets on its own objects, parameters."""
    names: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and _on_self(node):
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


def _on_self(node: ast.Attribute) -> bool:
    return isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")


def _foreign(module: str) -> bool:
    return module.split(".")[0] in _PRIVATE_PACKAGES


def _uses(path: Path, ours: set[str]) -> list[str]:
    found = []
    where = path.name if PACKAGE.parent not in path.parents else path.relative_to(PACKAGE.parent)
    for node in ast.walk(ast.parse(path.read_text())):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import):
            found += [f"{where}:{line} imports {a.name}" for a in node.names
                      if _foreign(a.name) and any(map(_private, a.name.split(".")))]
        elif isinstance(node, ast.ImportFrom) and not node.level and _foreign(node.module or ""):
            if any(map(_private, node.module.split("."))):  # type: ignore[union-attr]
                found.append(f"{where}:{line} imports from {node.module}")
            found += [f"{where}:{line} imports {a.name} from {node.module}" for a in node.names if _private(a.name)]
        elif isinstance(node, ast.Attribute) and _private(node.attr) and not isinstance(node.ctx, ast.Load) \
                and not _on_self(node) and node.attr not in ours and not node.attr.startswith(OURS):
            found.append(f"{where}:{line} patches .{node.attr}")
        elif isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in ours:
            found.append(f"{where}:{line} uses .{node.attr}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("setattr", "delattr") \
                and len(node.args) > 1 and isinstance(node.args[1], ast.Constant) and _private(str(node.args[1].value)):
            found.append(f"{where}:{line} patches .{node.args[1].value}")
        elif isinstance(node, (ast.Subscript, ast.Attribute)) and _writes_through_vars(node):
            found.append(f"{where}:{line} writes through vars()")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _PRIVATE_MODULE.search(node.value):
            found.append(f"{where}:{line} names {_PRIVATE_MODULE.search(node.value).group(0)}")  # type: ignore[union-attr]
    return found


def _writes_through_vars(node: ast.Subscript | ast.Attribute) -> bool:
    """``vars(x)[k] = v``, ``del vars(x)[k]`` or ``vars(x).update(...)`` (and
    the other mutating methods) on anything but ``self``."""
    if isinstance(node, ast.Subscript):
        inner, writes = node.value, not isinstance(node.ctx, ast.Load)
    else:
        inner, writes = node.value, node.attr in ("update", "pop", "setdefault", "clear", "popitem")
    return writes and isinstance(inner, ast.Call) and isinstance(inner.func, ast.Name) and inner.func.id == "vars" \
        and not (inner.args and isinstance(inner.args[0], ast.Name) and inner.args[0].id == "self")


def test_private_torch_names_only_behind_the_door() -> None:
    ours = _ours()
    found = [use for path in _modules() for use in _uses(path, ours)]
    assert not found, "private names or patches outside pytest_fakepg/_compat/:\n" + "\n".join(found)


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
        "from _pytest.runner import runtestprotocol\n"
        "item._fixtureinfo\n"
        "mesh_cls._theirs = staticmethod(f)\n"
        "world._mine = f\n"
        "setattr(planner, '_search', f)\n"
        "vars(module)['_plan'] = f\n"
        "vars(random).update(bound)\n"
        "self._mine = 1\n"
    )
    uses = sorted(u.split(" ", 1)[1] for u in _uses(module, {"_mine"}))
    assert uses == sorted([
        "imports torch._C",
        "imports _functional_collectives from torch.distributed",
        "imports from torch.distributed._tools",
        "names torch.distributed.tensor._random",
        "uses ._get_backend",
        "imports from _pytest.runner",
        "uses ._fixtureinfo",
        "patches ._theirs",
        "patches ._search",
        "writes through vars()",
        "writes through vars()",
    ])
