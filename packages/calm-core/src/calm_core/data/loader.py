"""``BlockLoader``: an endless, seeded, resumable stream of fixed-length token blocks.

The split's token stream (one or many shards) is cut into non-overlapping blocks of ``seq_len``
tokens (a multiple of K, so every block starts on a chunk boundary; the tail shorter than a block
is not used). Each epoch visits every block once in an order given by a permutation seeded with
``(seed, epoch)``.

What is unusual: the position is a single counter of blocks consumed globally, across every rank.
A step takes ``batch_size * world_size`` consecutive blocks of the stream and rank ``r`` keeps
the ``r``-th slice of ``batch_size``, so the blocks a step uses depend only on the global batch:
one process with batch 8 sees the same blocks as two with batch 4. ``state_dict()`` is that
counter (plus the shape it was made with), so resuming is exact and costs nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from calm_core.data.dataset import PackedDataset
from calm_core.data.sources import DataError

__all__ = ["BlockLoader"]


class BlockLoader:
    """Batches ``LongTensor[batch_size, seq_len]`` of shuffled blocks; endless; resumable.

    Args:
        dataset: the packed split to read.
        seq_len: tokens per block; a multiple of the dataset's chunk size K.
        batch_size: blocks per batch on this rank.
        seed: seeds the per-epoch shuffles.
        rank, world_size: this process's slice of each global batch under DDP.
        shuffle: False reads blocks in order (evaluation).
    """

    def __init__(
        self,
        dataset: PackedDataset,
        seq_len: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        *,
        shuffle: bool = True,
    ) -> None:
        k = dataset.chunk_size
        if seq_len < 1 or seq_len % k:
            raise DataError(
                f"seq_len {seq_len} must be a positive multiple of the data's chunk size K={k} "
                f"(e.g. {max(k, seq_len - seq_len % k)})"
            )
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is not in [0, world_size={world_size})")
        self.num_blocks = dataset.num_tokens // seq_len
        if self.num_blocks == 0:
            raise DataError(
                f"{dataset!r} has {dataset.num_tokens} tokens, fewer than one block of "
                f"seq_len={seq_len}; use a smaller seq_len or more data"
            )
        self.dataset = dataset
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.position = 0  # blocks consumed so far, summed over every rank
        self._perm_epoch = -1
        self._perm = np.arange(self.num_blocks)

    @property
    def global_batch_size(self) -> int:
        """Blocks taken from the stream per batch, over all ranks."""
        return self.batch_size * self.world_size

    @property
    def epoch(self) -> int:
        """Index of the epoch the next block comes from."""
        return self.position // self.num_blocks

    def __len__(self) -> int:
        """Batches per epoch (rounded down)."""
        return max(1, self.num_blocks // self.global_batch_size)

    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return self._perm
        if epoch != self._perm_epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._perm = rng.permutation(self.num_blocks)
            self._perm_epoch = epoch
        return self._perm

    def _blocks(self, start: int, count: int) -> list[int]:
        out: list[int] = []
        pos = start
        while len(out) < count:
            epoch, offset = divmod(pos, self.num_blocks)
            take = min(count - len(out), self.num_blocks - offset)
            out.extend(int(b) for b in self._order(epoch)[offset : offset + take])
            pos += take
        return out

    def next_batch(self) -> torch.Tensor:
        """The next batch for this rank; advances the global position by one global batch."""
        start = self.position + self.rank * self.batch_size
        blocks = self._blocks(start, self.batch_size)
        self.position += self.global_batch_size
        n = self.seq_len
        arr = np.stack([self.dataset.read(b * n, (b + 1) * n) for b in blocks])
        return torch.from_numpy(arr.astype(np.int64))

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self

    def __next__(self) -> torch.Tensor:
        return self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        """The exact position (JSON-serialisable)."""
        return {
            "position": self.position,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "global_batch_size": self.global_batch_size,
            "num_blocks": self.num_blocks,
            "shuffle": self.shuffle,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position (of any batch size); data, seq_len and seed must match."""
        for key in ("seed", "seq_len", "num_blocks", "shuffle"):
            mine = getattr(self, key)
            if key in state and state[key] != mine:
                raise DataError(
                    f"cannot resume the loader: saved {key}={state[key]!r} but this loader has "
                    f"{key}={mine!r}; resume with the same data, seq_len and seed"
                )
        self.position = int(state["position"])
