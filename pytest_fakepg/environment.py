"""torchrun's environment in a fake world: the variables a world sets,
hides and puts back (NOTE [torchrun's environment])."""

from __future__ import annotations

import os
from typing import Any

from . import _compat

# Variables a fake world must not inherit: TORCH_DISTRIBUTED_DEBUG=DETAIL
# wraps every group in a gloo-checked wrapper that fake backends cannot serve.
# TORCH_DIST_INIT_BARRIER=1 makes new_group wait in the store for every rank
# of the world, which never arrive in a fake one.
HIDDEN = ("TORCH_DISTRIBUTED_DEBUG", "TORCH_DIST_INIT_BARRIER")
# pytest's (and pytest-xdist's) bookkeeping: they set and unset these
# themselves while a world is up; restoring them would undo their work.
_PYTEST_ENV = ("PYTEST_CURRENT_TEST", "PYTEST_VERSION")
_PYTEST_ENV_PREFIX = "PYTEST_XDIST_"

# NOTE [torchrun's environment]
# Much training code learns its rank from the variables torchrun sets
# (transformers takes its tensor-parallel size from WORLD_SIZE; scripts read
# int(os.environ["LOCAL_RANK"])). While a world is up (env=True, the
# default) they say what torchrun would tell this rank, on nodes of
# ``local_world_size`` ranks: RANK, LOCAL_RANK (rank % local),
# GROUP_RANK (the node, rank // local), ROLE_RANK, ROLE_NAME, WORLD_SIZE,
# LOCAL_WORLD_SIZE, ROLE_WORLD_SIZE, GROUP_WORLD_SIZE (the nodes), and the
# elastic agent's TORCHELASTIC_RUN_ID ("none", torchrun's default rendezvous
# id), TORCHELASTIC_RESTART_COUNT and TORCHELASTIC_MAX_RESTARTS (0): Lightning
# and torch.distributed.is_torchelastic_launched() take the run for torchrun's
# by the run id. MASTER_ADDR and MASTER_PORT are torchrun's defaults
# (127.0.0.1:29500), read by launch helpers that copy them (Lightning's
# TorchElasticEnvironment); nothing listens there: there is no rendezvous, and
# the default group is up already. The
# environment is put back exactly when the world goes down (restore).
# In an exact world the rank's variables change at every switch, so each
# rank's program (and the threads it starts) reads its own. Ranks per node,
# unless given: on device="cpu" an 8-GPU node (8, or the whole world where 8
# does not divide it); on device="cuda" this machine's GPUs (the largest
# divisor of the world size not above torch.cuda.device_count()), because
# LOCAL_RANK is a device index there: scripts and DeviceMesh itself call
# torch.cuda.set_device(LOCAL_RANK), which must name a GPU this machine has.
PER_RANK = ("RANK", "LOCAL_RANK", "GROUP_RANK", "ROLE_RANK")


def ranks_per_node(world_size: int, device: str) -> int:
    """LOCAL_WORLD_SIZE when none is given: NOTE [torchrun's environment]."""
    if device == "cuda":
        import torch

        gpus = torch.cuda.device_count()
        if gpus:
            return max(d for d in range(1, min(gpus, world_size) + 1) if world_size % d == 0)
    return 8 if world_size % 8 == 0 else world_size  # and the fake CUDA device's node (fake/cuda.py)


def rank_env(rank: int, local: int) -> dict[str, str]:
    """The variables of NOTE [torchrun's environment] that differ per rank."""
    return {"RANK": str(rank), "LOCAL_RANK": str(rank % local), "GROUP_RANK": str(rank // local),
            "ROLE_RANK": str(rank)}


def torchrun_env(world_size: int, local: int, rank: int | None) -> dict[str, str]:
    """NOTE [torchrun's environment] on nodes of ``local`` ranks, for
    ``rank`` (None: the world's variables only)."""
    env = {"WORLD_SIZE": str(world_size), "LOCAL_WORLD_SIZE": str(local),
           "ROLE_WORLD_SIZE": str(world_size), "ROLE_NAME": "default", "GROUP_WORLD_SIZE": str(world_size // local),
           "TORCHELASTIC_RUN_ID": "none", "TORCHELASTIC_RESTART_COUNT": "0", "TORCHELASTIC_MAX_RESTARTS": "0",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    if rank is not None:
        env.update(rank_env(rank, local))
    return env


def _is_pytest_variable(key: Any) -> bool:
    name = os.fsdecode(key) if isinstance(key, bytes) else key
    return name in _PYTEST_ENV or name.startswith(_PYTEST_ENV_PREFIX)


def restore(saved: dict[Any, Any]) -> None:
    """Put the environment back as ``saved`` (a copy of environ_data()),
    leaving pytest's own variables as pytest has them now."""
    current = _compat.runtime.environ_data()
    if current == saved:
        return
    decode = os.fsdecode if current is not os.environ else (lambda k: k)
    for key in [k for k in current if k not in saved and not _is_pytest_variable(k)]:
        del os.environ[decode(key)]
    for key, value in saved.items():
        if current.get(key) != value and not _is_pytest_variable(key):
            os.environ[decode(key)] = decode(value)


def put_back(values: dict[str, str | None]) -> None:
    """Set each named variable back to its value in ``values`` (None: unset)."""
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def device_available(device: str) -> bool:
    """Whether this process can use devices of type ``device`` ("cpu" always)."""
    if device == "cpu":
        return True
    import torch

    available = getattr(getattr(torch, device, None), "is_available", None)
    return bool(available is not None and available())
