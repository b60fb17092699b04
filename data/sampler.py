"""Batches that mix domains, so the alignment loss sees several domains in every step."""

from __future__ import annotations

import torch
from torch.utils.data import Sampler


class DomainBalancedBatchSampler(Sampler[list[int]]):
    """Each batch draws ``batch_size / K`` figures from each of the K domains (round-robin remainder).

    Within a domain, figures are taken without replacement from a reshuffled order,
    cycling when a small domain runs out; an epoch has ``len(dataset) // batch_size``
    batches. Under DistributedDataParallel every rank builds the same global batches
    (same seed and epoch) and keeps its own contiguous slice of each.
    """

    def __init__(self, domains: torch.Tensor | list[int], batch_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        domains = torch.as_tensor(domains)
        self.pools = [torch.nonzero(domains == d).flatten() for d in torch.unique(domains)]
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} not divisible by world size {world_size}")
        if batch_size < len(self.pools):
            raise ValueError(f"batch size {batch_size} smaller than the number of domains {len(self.pools)}")
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.num_batches = max(1, len(domains) // batch_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        k = len(self.pools)
        orders = [pool[torch.randperm(len(pool), generator=g)] for pool in self.pools]
        cursors = [0] * k
        per_rank = self.batch_size // self.world_size
        for b in range(self.num_batches):
            counts = [self.batch_size // k] * k
            for j in range(self.batch_size % k):
                counts[(b + j) % k] += 1
            batch = []
            for d, n in enumerate(counts):
                pool = orders[d]
                take = [(cursors[d] + i) % len(pool) for i in range(n)]
                if cursors[d] + n > len(pool):  # reshuffle for the next cycle through this domain
                    orders[d] = pool[torch.randperm(len(pool), generator=g)]
                cursors[d] = (cursors[d] + n) % len(pool)
                batch.extend(pool[take].tolist())
            batch = [batch[i] for i in torch.randperm(len(batch), generator=g).tolist()]
            yield batch[self.rank * per_rank:(self.rank + 1) * per_rank]
