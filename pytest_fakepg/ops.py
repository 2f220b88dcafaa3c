"""The collectives, by name: read from csrc/ops.def, the one list of them that
the C++ backend also compiles (an X-macro), so the two cannot drift apart.

A leaf module: no torch, no other module of this package. Record codes are
positions in ``OP_NAMES``.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

ALL_OPS = "*"
# A record's reduce-op code when the op has none (csrc: kNoReduceOp).
NO_REDUCE_OP = 255


def _read_op_names() -> tuple[str, ...]:
    here = Path(__file__).resolve().parent
    for csrc in (here / "csrc", here.parent / "csrc"):  # wheel, then checkout
        path = csrc / "ops.def"
        if path.is_file():
            return tuple(re.findall(r"^FAKEPG_OP\((\w+)\)$", path.read_text(), re.MULTILINE))
    raise ImportError(f"pytest-fakepg: csrc/ops.def is missing beside {here}; reinstall the package")


OP_NAMES: tuple[str, ...] = _read_op_names()
_OP_CODES = {name: code for code, name in enumerate(OP_NAMES)}


def check_op(op: Any, where: str = "fail") -> str:
    """``op`` if it names a collective or is ``"*"``; else a ValueError that
    lists the names and suggests the closest."""
    if isinstance(op, str) and (op == ALL_OPS or op in _OP_CODES):
        return op
    hint = ""
    if isinstance(op, str):
        close = difflib.get_close_matches(op, OP_NAMES, n=1)
        if close:
            hint = f" (did you mean {close[0]!r}?)"
    raise ValueError(
        f"unknown collective {op!r} in {where}{hint}; allowed: '*' or one of {', '.join(OP_NAMES)}"
    )


def op_code(op: str | None, where: str = "fail") -> int:
    """The record code of ``op``; -1 for None or ``"*"`` (every op)."""
    if op is None or op == ALL_OPS:
        return -1
    return _OP_CODES[check_op(op, where)]
