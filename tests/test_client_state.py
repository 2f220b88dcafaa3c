"""Client state (NOTE [Client state], _compat/state.py): what a training
library keeps in module globals - its groups, its rank - is each exact
rank's own, and is as before a world after any world, however the library
was imported. A small library written here stands for Megatron's
parallel_state; tests/test_clients.py runs the real libraries."""

from __future__ import annotations

import importlib
import sys
import textwrap
import uuid

import pytest
import torch.distributed as dist

from pytest_fakepg import ExactWorld, FakeWorld

LIBRARY = '''
import torch.distributed as dist

_GROUP = None
_RANKS = []
_SEEN = {}


class _Config:
    def __init__(self):
        self.size = None


CONFIG = _Config()


def initialize(size):
    """As Megatron's initialize_model_parallel: once per process."""
    global _GROUP
    if _GROUP is not None:
        raise RuntimeError("model parallel group is already initialized")
    start = dist.get_rank() // size * size
    _RANKS.extend(range(start, start + size))
    _GROUP = dist.new_group(_RANKS)
    CONFIG.size = size
    _SEEN[dist.get_rank()] = size


def group_rank():
    return dist.get_rank(_GROUP)
'''


@pytest.fixture
def library(tmp_path, monkeypatch):
    """A fresh package ``name`` with a module ``name.state`` (not imported yet)."""
    name = f"fakepg_lib_{uuid.uuid4().hex[:8]}"
    package = tmp_path / name
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "state.py").write_text(textwrap.dedent(LIBRARY))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[module]


def program(state):
    def run():
        state.initialize(2)
        dist.barrier()  # every rank initialised before any reads
        return state.group_rank(), list(state._RANKS), state.CONFIG.size, dict(state._SEEN)
    return run


@pytest.mark.parametrize("named", ["state", "package"])
def test_a_named_modules_globals_are_each_ranks_own(library, named) -> None:
    """Each rank initialises the library once, as in its own process; a
    package named covers its modules. Afterwards the module is as before."""
    state = importlib.import_module(f"{library}.state")
    modules = f"{library}.state" if named == "state" else [library]
    with ExactWorld(4, per_rank_modules=modules) as world:
        results = world.run(program(state))
    assert results == [
        (0, [0, 1], 2, {0: 2}), (1, [0, 1], 2, {1: 2}), (0, [2, 3], 2, {2: 2}), (1, [2, 3], 2, {3: 2})]
    assert (state._GROUP, state._RANKS, state.CONFIG.size, state._SEEN) == (None, [], None, {})


def test_without_the_name_the_ranks_share_the_library(library) -> None:
    """What the option changes: unnamed, rank 1 finds rank 0's group."""
    state = importlib.import_module(f"{library}.state")
    with ExactWorld(4) as world, pytest.raises(RuntimeError, match="already initialized"):
        world.run(program(state))


def test_a_library_imported_inside_a_rank_is_each_ranks_own(library) -> None:
    """Imported for the first time by rank 0's program, midway through its
    turn: the other ranks start from the module as its import left it, and
    so does the next world."""
    def run():
        state = importlib.import_module(f"{library}.state")
        return program(state)()

    for _ in range(2):
        with ExactWorld(2, per_rank_modules=[library]) as world:
            assert [r[:3] for r in world.run(run)] == [(0, [0, 1], 2), (1, [0, 1], 2)]
        state = sys.modules[f"{library}.state"]
        assert (state._GROUP, state._RANKS, state.CONFIG.size, state._SEEN) == (None, [], None, {})
    assert "SourceFileLoader" in type(state.__loader__).__name__, "the import watch kept its loader"


@pytest.mark.parametrize("imported", ["before", "inside"])
def test_what_a_uniform_worlds_program_caches_is_gone_after_it(library, imported) -> None:
    """The second test in a process must not find the first one's group."""
    if imported == "before":
        importlib.import_module(f"{library}.state")
    for rank in (0, 3):
        with FakeWorld(4, rank=rank, per_rank_modules=[library]):
            state = importlib.import_module(f"{library}.state")
            state.initialize(2)
            assert state.group_rank() == rank % 2
        assert (state._GROUP, state._RANKS, state.CONFIG.size, state._SEEN) == (None, [], None, {})


def test_the_import_watches_are_gone_after_the_world() -> None:
    """The world's import watch, and the one of patches waiting for a
    module not imported yet (NOTE [Patches]: torch's CP module, if no test
    before loaded it), leave with the world."""
    before = list(sys.meta_path)
    with FakeWorld(2):
        added = [type(finder).__name__ for finder in sys.meta_path if finder not in before]
        assert "ImportWatch" in added and set(added) <= {"ImportWatch", "_Watch"}
    assert sys.meta_path == before


@pytest.mark.parametrize("given", [3, ["ok", 3], "not a module", ["a..b"], {"a": 1}])
def test_bad_module_names_are_refused_naming_them(given) -> None:
    with pytest.raises(TypeError, match=r"per_rank_modules must be a module name or a list of them.*got " +
                       __import__("re").escape(repr(given))):
        FakeWorld(2, per_rank_modules=given)
    assert not dist.is_initialized()


@pytest.mark.parametrize("imported", ["before", "inside"])
def test_torch_functions_a_library_replaces_are_put_back(library, imported) -> None:
    """DeepSpeed ZeRO-3 sets torch.nn.functional.linear to its own wrapper
    for the rest of the process: every later test's Linear ran through it.
    torch's namespaces are read where a client is loaded, or as one is
    first imported inside the world."""
    import torch
    import torch.nn.functional as F

    if imported == "before":
        importlib.import_module(f"{library}.state")
    linear, to = F.linear, torch.Tensor.to
    with FakeWorld(2, per_rank_modules=[library]):
        importlib.import_module(f"{library}.state")
        F.linear = lambda *args, **kwargs: None
        torch.Tensor.to = lambda self, *args, **kwargs: self
    assert F.linear is linear and torch.Tensor.to is to
