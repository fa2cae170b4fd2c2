"""Deterministic order and randomness of a distillation run: what makes a resume exact.

The batch order is a function of (seed, epoch) and dropout is reseeded from (seed, step, rank) at
every optimizer step, so neither the data position nor the random state needs saving.
"""

from __future__ import annotations

import hashlib

from hfcompress.plugin import BadInputError

__all__ = ["Batches", "derived_seed"]


def derived_seed(*parts: int) -> int:
    """A per-(seed, step, rank) seed: dropout masks do not depend on how many steps ran in this
    process, which is what makes a resumed run bitwise equal to an uninterrupted one."""
    digest = hashlib.sha256(",".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big")


class Batches:
    """Deterministic global batches: epoch e is a permutation seeded by (seed, e); micro-step m
    takes slice m of it and each rank its own part. Position m is all a resume needs."""

    def __init__(self, n: int, per_rank: int, world: int, seed: int) -> None:
        self.n, self.per_rank, self.world, self.seed = n, per_rank, world, seed
        self.global_batch = per_rank * world
        self.per_epoch = n // self.global_batch
        if self.per_epoch == 0:
            raise BadInputError(
                f"distillation: {n} training texts are fewer than one global batch "
                f"(batch_size {per_rank} x {world} processes); lower batch_size or give more data"
            )
        self._epoch = -1
        self._perm: list[int] = []

    def indices(self, micro_step: int, rank: int) -> list[int]:
        import torch

        epoch, offset = divmod(micro_step, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(derived_seed(self.seed, epoch, 7))
            self._perm = torch.randperm(self.n, generator=g).tolist()
            self._epoch = epoch
        start = offset * self.global_batch + rank * self.per_rank
        return self._perm[start : start + self.per_rank]
