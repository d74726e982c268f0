"""Split a study over the processes that ``torchrun --nproc_per_node N`` starts.

    rank, world = shard.init()        # gloo on CPU, nccl on CUDA; single process without torchrun
    mine = shard.share(n)             # this rank's items: one contiguous block of range(n)
    rows = shard.gather(results)      # rank 0: every rank's rows in item order; others: None
    total = shard.reduce(t)           # every rank: the sum (or max) of every rank's t
    if shard.is_main(): write(rows)
    shard.finish()

Blocks are contiguous and in rank order, so concatenating the ranks' rows in rank order puts
them in item order. Without torchrun (``WORLD_SIZE`` unset or 1) every call is the trivial
single-process version and torch.distributed is never touched.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

__all__ = ["finish", "gather", "init", "is_main", "reduce", "share"]

_owned = False  # whether init() created the process group (and finish() should destroy it)


def _dist():
    import torch.distributed as dist

    return dist


def _active() -> bool:
    dist = _dist()
    return dist.is_available() and dist.is_initialized()


def init() -> tuple[int, int]:
    """(rank, world size). Under torchrun (``WORLD_SIZE`` > 1) initialises the default process
    group once (nccl if CUDA is available, else gloo); calling it again is harmless."""
    global _owned
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not _active():
        dist = _dist()
        if not dist.is_available():
            raise RuntimeError(f"WORLD_SIZE={world} but this torch was built without torch.distributed")
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group("nccl")
        else:
            dist.init_process_group("gloo")
        _owned = True
    return rank(), size()


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return _dist().get_rank() if _active() else 0


def size() -> int:
    """The number of processes (1 without a process group)."""
    return _dist().get_world_size() if _active() else 1


def is_main() -> bool:
    """True on rank 0, the process that gathers and writes."""
    return rank() == 0


def block(n: int, rank: int, world: int) -> range:
    """Rank ``rank``'s contiguous share of range(n); sizes differ by at most one."""
    if n < 0 or world < 1 or not 0 <= rank < world:
        raise ValueError(f"n, rank, world: expected n ≥ 0 and 0 ≤ rank < world, got {n}, {rank}, {world}")
    return range(rank * n // world, (rank + 1) * n // world)


def share(n: int) -> range:
    """This rank's indices of n items (a contiguous block; the blocks of all ranks tile range(n))."""
    return block(n, rank(), size())


def _device(t: Tensor) -> torch.device:
    """Where a collective must hold ``t``: nccl works on this rank's GPU only, gloo anywhere."""
    return torch.device("cuda", torch.cuda.current_device()) if _dist().get_backend() == "nccl" else t.device


def gather(t: Tensor) -> Tensor | None:
    """Every rank's ``t`` concatenated along dim 0 in rank order (= item order) on rank 0; None
    elsewhere. Ranks may hold different numbers of rows; the other dimensions and the dtype must
    agree among ranks that hold any (a rank with none adopts theirs)."""
    if not _active():
        return t
    dist = _dist()
    world = dist.get_world_size()
    meta: list = [None] * world
    dist.all_gather_object(meta, (t.shape[0], tuple(t.shape[1:]), str(t.dtype)))
    kinds = {(s, d) for n, s, d in meta if n > 0} or {(tuple(t.shape[1:]), str(t.dtype))}
    if len(kinds) > 1:
        raise ValueError(f"t: ranks disagree on the trailing shape or dtype: {sorted(kinds)}")
    tail, dtype = next(iter(kinds))
    dtype = getattr(torch, dtype.removeprefix("torch."))
    rows = max(n for n, _, _ in meta)
    device = _device(t)
    # all_gather needs equal sizes: pad every rank's rows to the longest, trim after
    padded = torch.zeros((rows, *tail), dtype=dtype, device=device)
    padded[: t.shape[0]] = t.to(device=device, dtype=dtype)
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    if dist.get_rank() != 0:
        return None
    return torch.cat([p[:n] for p, (n, _, _) in zip(parts, meta)]).to(t.device)


def reduce(t: Tensor, op: str = "sum") -> Tensor:
    """Every rank's ``t`` reduced elementwise by ``op`` ("sum" or "max"), as a new tensor on every
    rank (detached: no gradient flows through it); ``t`` itself without a process group."""
    if op not in ("sum", "max"):
        raise ValueError(f"op: expected 'sum' or 'max', got {op!r}")
    if not _active():
        return t
    dist = _dist()
    device = _device(t)
    out = t.detach().to(device, copy=True)
    dist.all_reduce(out, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return out.to(t.device)


def finish() -> None:
    """Wait for every rank, then tear down the process group if :func:`init` created it."""
    global _owned
    if _owned and _active():
        dist = _dist()
        dist.barrier()
        dist.destroy_process_group()
    _owned = False
