"""The collectives, by name: read from csrc/ops.def, the one table of them
that the C++ backend also compiles (an X-macro), so the two cannot drift apart.
Every fact about an op that both languages need (its Flight Recorder name, its
traits, the other public names that issue it) is a column of that table.

A leaf module: no torch, no other module of this package. Record codes are
positions in ``OP_NAMES``.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, NamedTuple

ALL_OPS = "*"


class OpInfo(NamedTuple):
    name: str
    flight_recorder_name: str
    traits: frozenset[str]  # of kSameShapes, kFromRoot, kToRoot, kPointToPoint
    flight_recorder_sizes: str  # how a dump writes its sizes (csrc/ops.def)


def _read_table() -> tuple[tuple[OpInfo, ...], dict[str, str]]:
    here = Path(__file__).resolve().parent
    for csrc in (here / "csrc", here.parent / "csrc"):  # wheel, then checkout
        path = csrc / "ops.def"
        if path.is_file():
            text = path.read_text()
            break
    else:
        raise ImportError(f"pytest-fakepg: csrc/ops.def is missing beside {here}; reinstall the package")
    ops = tuple(
        OpInfo(name, fr_name, frozenset(t.strip() for t in traits.split("|")) - {"0"}, sizes)
        for name, fr_name, traits, sizes in re.findall(r"^FAKEPG_OP\((\w+), (\w+), ([\w |]+), (\w+)\)$", text,
                                                       re.MULTILINE)
    )
    aliases = dict(re.findall(r"^FAKEPG_ALIAS\((\w+), (\w+)\)$", text, re.MULTILINE))
    return ops, aliases


OPS, ALIASES = _read_table()
OP_NAMES: tuple[str, ...] = tuple(op.name for op in OPS)
_OP_CODES = {name: code for code, name in enumerate(OP_NAMES)}
# Ops by trait (csrc/ops.def says what each means).
SAME_SHAPES = frozenset(op.name for op in OPS if "kSameShapes" in op.traits)
FROM_ROOT = frozenset(op.name for op in OPS if "kFromRoot" in op.traits)
TO_ROOT = frozenset(op.name for op in OPS if "kToRoot" in op.traits)
POINT_TO_POINT = frozenset(op.name for op in OPS if "kPointToPoint" in op.traits)
# How a Flight Recorder dump writes each op's sizes (csrc/ops.def).
FLIGHT_RECORDER_SIZES = {op.name: op.flight_recorder_sizes for op in OPS}
FLIGHT_RECORDER_NAMES = {op.name: op.flight_recorder_name for op in OPS}


def check_op(op: Any, where: str = "fail") -> str:
    """The op that ``op`` names: itself if it is an op or ``"*"``, the op it
    issues if it is another public name of one (``all_gather_single``); else
    a ValueError that lists the names and suggests the closest."""
    if isinstance(op, str):
        if op == ALL_OPS or op in _OP_CODES:
            return op
        if op in ALIASES:
            return ALIASES[op]
    hint = ""
    if isinstance(op, str):
        # Over every name a user may write, so a typo of an alias suggests
        # that alias rather than some other collective.
        close = difflib.get_close_matches(op, (*OP_NAMES, *ALIASES), n=1)
        if close:
            hint = f" (did you mean {close[0]!r}?)"
    also = ", ".join(f"{a} (= {o})" for a, o in ALIASES.items())
    raise ValueError(
        f"unknown collective {op!r} in {where}{hint}; allowed: '*' or one of {', '.join(OP_NAMES)}; "
        f"or {also}"
    )


def op_code(op: str | None, where: str = "fail") -> int:
    """The record code of ``op`` (or of the op an alias issues); -1 for None
    or ``"*"`` (every op)."""
    if op is None or op == ALL_OPS:
        return -1
    return _OP_CODES[check_op(op, where)]
