"""Which samples each batch holds, per epoch and per process: the order every backend follows.

Train order is a permutation drawn from (seed, epoch) alone (`epoch_order`), so a resumed run
and every backend (torchvision, DALI, GPU cache) see the same samples in the same batches.
With `data.sampler: balanced` it is instead N draws with replacement from the same generator,
by the probabilities of `balance.balanced_sample_weights` (`draw_weights`).

Sharding over several processes (`shard=(rank, world)`, from `launcher_shard()`):
- val/test: rank r reads positions r, r+world, r+2*world, ... of the split, in order: every
  sample exactly once over all ranks, no padding, no duplicates. Each rank computes the
  predictions of its own samples; the caller gathers them (e.g. `torch.distributed.
  all_gather_object` of each rank's (labels, probabilities)) and computes metrics once on the
  union, so nothing is counted twice and nothing is missed.
- train: the (seed, epoch) permutation is cut into global steps of `world * batch_size`
  samples and rank r takes the r-th slice of each step; the last, short step is divided as
  evenly as it goes. Ranks are disjoint, together cover the epoch, and all run the same number
  of steps (DDP's collectives need that). A last step too short to give every rank two
  samples is left out of that epoch (BatchNorm cannot train on one sample; which samples are
  left out changes every epoch), which with one process is `epoch_order`'s own rule. With one
  process the batches are exactly the unsharded ones.
"""
from __future__ import annotations

import os

import numpy as np


def epoch_order(num_samples: int, seed: int, epoch: int, batch_size: int, shuffle: bool,
                draw_weights: np.ndarray | None = None) -> np.ndarray:
    """The sample positions of one epoch: a (seed, epoch) permutation when shuffling, else in order.

    With `draw_weights` (probabilities summing to 1) a shuffled epoch is `num_samples` draws with
    replacement by them instead. A shuffled order whose last batch would hold a single sample
    leaves that sample out for this epoch (it is another one every epoch): BatchNorm cannot
    train on a batch of one.
    """
    if not shuffle:
        return np.arange(num_samples)
    rng = np.random.default_rng([seed, epoch])
    if draw_weights is None:
        order = rng.permutation(num_samples)
    else:
        order = rng.choice(num_samples, size=num_samples, replace=True, p=draw_weights)
    return order[:-1] if num_samples % batch_size == 1 and num_samples > 1 else order


def shard_batches(num_samples: int, seed: int, epoch: int, batch_size: int, shuffle: bool,
                  shard: tuple[int, int] = (0, 1), draw_weights: np.ndarray | None = None) -> list[np.ndarray]:
    """The sample positions of each batch one shard reads in one epoch (module docstring).

    Args:
        num_samples: size of the split.
        seed, epoch: fix the train order (`epoch_order`).
        batch_size: per-process batch size.
        shuffle: train (a sharded permutation) or evaluation (positions rank::world, in order).
        shard: (rank, world).
        draw_weights: train only: per-sample draw probabilities (`epoch_order`), None = a permutation.

    Returns:
        int64 arrays of positions, one per batch, none empty; with shuffle every rank gets
        the same number of batches.
    """
    rank, world = shard
    if not shuffle:
        positions = np.arange(num_samples)[rank::world]
        return np.split(positions, range(batch_size, len(positions), batch_size)) if len(positions) else []
    step = batch_size * world
    order = epoch_order(num_samples, seed, epoch, step, shuffle=True, draw_weights=draw_weights)
    tail = len(order) % step
    if tail < 2 * world:
        order = order[:len(order) - tail]
        tail = 0
    full = len(order) - tail
    batches = [order[start + rank * batch_size:start + (rank + 1) * batch_size] for start in range(0, full, step)]
    if tail:
        batches.append(np.array_split(order[full:], world)[rank])
    return batches


def launcher_shard(environ=None) -> tuple[int, int]:
    """(rank, world) from the launcher's RANK and WORLD_SIZE variables (torchrun, deepspeed).

    Args:
        environ: the variables to read; default `os.environ`. Unset means (0, 1).

    Raises:
        ValueError: naming the variable when it is not an integer or the pair is inconsistent.
    """
    environ = os.environ if environ is None else environ
    values = []
    for name, default in (("RANK", "0"), ("WORLD_SIZE", "1")):
        try:
            values.append(int(environ.get(name, default)))
        except ValueError:
            raise ValueError(f"environment variable {name} must be an integer, got {environ[name]!r}") from None
    check_shard((values[0], values[1]), "RANK/WORLD_SIZE")
    return values[0], values[1]


def check_shard(shard: tuple[int, int], name: str = "shard") -> None:
    """Raises ValueError, naming `name`, unless `shard` is (rank, world) with 0 <= rank < world."""
    if len(shard) != 2 or not 0 <= shard[0] < shard[1]:
        raise ValueError(f"{name} must be (rank, world) with 0 <= rank < world, got {tuple(shard)}")
