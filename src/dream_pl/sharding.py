"""Classes sharded over processes: which process owns which classes, and the few collectives the loop needs.

Under ``trainer=ddp`` every process holds, matches, clusters and steps only its own classes' synthetic
images (class c belongs to rank c mod k, so class counts stay balanced): no image gradient crosses
processes, and the set's memory per process falls as 1/k. The per-class losses are summed over processes
(logging and the NaN guard). The matching network is built from the same seed and trained on the same
batches everywhere, and rank 0's weights are broadcast after every update so that no process can drift
(exact for any number of processes, unlike averaging identical gradients, which rounds differently for
k > 2). A checkpoint gathers the whole synthetic set (and its optimiser's momentum) on rank 0 and every
process keeps every class's selection, so a run started on k processes resumes on any number: each takes
its own classes' rows back (:meth:`Shard.own_rows`). Every random draw of a class comes from that
class's own stream, so the result does not depend on how classes are dealt out.

The real set is sharded the same way: a process keeps only its classes' images (``RealSet.keep``), and
the matching network's random batches over every class are assembled by summing each process's rows (zero
where another process holds the class: the sum is exact); a prepared dataset is memory-mapped, so a
process reads only its classes' pages. Each network update is split as well
(``distill.shard_net_update``): every process computes every k-th row of the assembled batch and the
gradients are summed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class Shard:
    """This process's rank, the number of processes, and the classes it owns."""

    rank: int
    world: int
    classes: tuple[int, ...]

    @classmethod
    def current(cls, num_classes: int) -> Shard:
        """The shard of this process (rank 0 of 1 without an initialised process group)."""
        rank, world = (dist.get_rank(), dist.get_world_size()) if distributed() else (0, 1)
        return cls(rank, world, owned_classes(num_classes, rank, world))

    @property
    def sharded(self) -> bool:
        """Whether more than one process shares the classes."""
        return self.world > 1

    def sum_(self, tensor: Tensor) -> Tensor:
        """In place: the sum over processes (each class's share comes from one process)."""
        if self.sharded:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def mean_over_classes(self, stats: dict[str, float], count: int) -> dict[str, float]:
        """Per-class means of this process's ``count`` classes -> the means over every process's classes."""
        if not self.sharded:
            return stats
        parts = self.merge({self.rank: (stats, count)}).values()
        keys = dict.fromkeys(k for part, _ in parts for k in part)
        total = {k: sum(n for part, n in parts if k in part) for k in keys}
        return {k: sum(part[k] * n for part, n in parts if k in part) / total[k] for k in keys if total[k]}

    def broadcast_(self, tensors: list[Tensor]) -> None:
        """Rank 0's values in place on every process."""
        if self.sharded:
            for tensor in tensors:
                dist.broadcast(tensor, src=0)

    def gather_classes(
        self, local: Tensor, rows: int, num_classes: int, dst: int | None = None
    ) -> Tensor | None:
        """Every class's ``rows`` rows, class-major, from each process's own classes' (``local``).

        On every process (``dst=None``: all-gather), or on rank ``dst`` alone (a gather: the others get
        ``None`` and never hold the whole tensor). Shares are padded to the largest one, as collectives
        need equal shapes.
        """
        if not self.sharded:
            return local
        width = math.ceil(num_classes / self.world) * rows
        padded = local.new_zeros(width, *local.shape[1:])
        padded[: len(local)] = local
        if dst is None:
            parts = [torch.empty_like(padded) for _ in range(self.world)]
            dist.all_gather(parts, padded)
        else:
            parts = [torch.empty_like(padded) for _ in range(self.world)] if self.rank == dst else None
            dist.gather(padded, parts, dst=dst)
            if parts is None:
                return None
        # class c is process (c mod k)'s (c div k)-th
        return torch.cat(
            [parts[c % self.world][(c // self.world) * rows :][:rows] for c in range(num_classes)]
        )

    def own_rows(self, whole: Tensor, rows: int) -> Tensor:
        """This process's classes' ``rows`` rows of a class-major tensor of every class (a checkpoint's)."""
        if not self.sharded:
            return whole
        return (
            torch.cat([whole[c * rows : (c + 1) * rows] for c in self.classes]) if self.classes else whole[:0]
        )

    def merge(self, owned: dict[int, Any]) -> dict[int, Any]:
        """Every process's ``{class: value}`` for its own classes, merged (small values: selections)."""
        if not self.sharded:
            return dict(owned)
        parts: list[dict[int, Any]] = [{} for _ in range(self.world)]
        dist.all_gather_object(parts, owned)
        return {c: value for part in parts for c, value in part.items()}


def distributed() -> bool:
    """Whether a process group is initialised (Lightning's DDP strategies initialise one)."""
    return dist.is_available() and dist.is_initialized()


def release() -> None:
    """End a sharded job's process group: wait for every process, then join the group's threads.

    Left to interpreter exit, a gloo group was seen to abort a finished process once under load
    ("terminate called without an active exception", tests/test_sharding.py on 2 busy cores).
    """
    if distributed():
        dist.barrier()
        dist.destroy_process_group()


def owned_classes(num_classes: int, rank: int, world: int) -> tuple[int, ...]:
    """The classes of ``rank`` out of ``world`` processes: c mod world == rank.

    >>> owned_classes(10, 1, 4)
    (1, 5, 9)
    """
    return tuple(range(rank, num_classes, world))
