"""Mini-batches of a :class:`~absnet.data.datasets.Split`, with resumable shuffling and augmentation.

Images come out as float32 in [0, 1] (``x / split.scale``), labels as int64; nothing is
normalised. Augmentation works on whole uint8 batches (no PIL): ``flip`` mirrors each image
left-right with probability 1/2; ``crop`` zero-pads by ``padding`` (4) pixels and cuts a random
window of the original size (the standard CIFAR / CROWN-IBP recipe); ``crop_flip`` does both,
crop first.

Randomness and resuming: :meth:`Loader.epoch` draws, at the call, the epoch's permutation
(``randperm``) and then one 62-bit *epoch seed* from the loader's generator. Batch ``i`` of the
epoch augments with its own ``torch.Generator`` seeded by ``splitmix64(epoch_seed, i)``, so batch
``i`` is the same whether or not batches ``0..i-1`` were produced, and ``epoch(start_batch=k)``
consumes exactly the same generator state as ``epoch()``: a resumed run continues bit for bit.

Several processes (``rank`` of ``world``): ``batch_size`` is then the *global* batch; every rank
draws the same permutation and keeps its contiguous part of each global batch (as
``tensor_split``: sizes differ by at most one, a part may be empty), and augmentation draws for
the whole global batch and applies the rank's slice of the draws, so the union of the ranks'
batches is exactly the single-process batch. ``epoch(start_example=k)`` starts the global
batches at example k of the epoch's order (resuming with another global batch size).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from absnet.data.datasets import Split

AUGMENTATIONS = ("none", "flip", "crop", "crop_flip")
_MASK64 = (1 << 64) - 1


def batch_seed(epoch_seed: int, index: int) -> int:
    """Return the augmentation seed of batch ``index``: splitmix64 of the epoch seed and the index.

    >>> batch_seed(1, 0) == batch_seed(1, 0) != batch_seed(1, 1)
    True
    """
    z = (epoch_seed + (index + 1) * 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def augment_batch(x: torch.Tensor, mode: str, generator: torch.Generator, padding: int = 4,
                  part: tuple[int, int] | None = None) -> torch.Tensor:
    """Augment a batch N×C×H×W (any dtype, any device) with randomness drawn from a CPU ``generator``.

    ``crop`` draws N row offsets, then N column offsets, each uniform in ``0..2*padding``;
    ``flip`` then draws N uniforms and mirrors the images whose draw is below 1/2. With
    ``part=(offset, total)``, ``x`` is rows ``offset:offset+N`` of a batch of ``total``: the draws
    are made for ``total`` images and ``x`` gets its rows' draws.

    >>> g = torch.Generator().manual_seed(0)
    >>> augment_batch(torch.ones(2, 3, 8, 8), "crop_flip", g).shape
    torch.Size([2, 3, 8, 8])
    """
    if mode not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {mode!r}")
    n, _, h, w = x.shape
    off, total = part if part is not None else (0, n)
    rows_of = slice(off, off + n)
    if mode in ("crop", "crop_flip") and padding > 0:
        oy = torch.randint(0, 2 * padding + 1, (total,), generator=generator)[rows_of].to(x.device)
        ox = torch.randint(0, 2 * padding + 1, (total,), generator=generator)[rows_of].to(x.device)
        padded = F.pad(x, (padding, padding, padding, padding)).permute(0, 2, 3, 1)  # N×H'×W'×C
        rows = oy[:, None] + torch.arange(h, device=x.device)  # N×H
        cols = ox[:, None] + torch.arange(w, device=x.device)  # N×W
        b = torch.arange(n, device=x.device)[:, None, None]
        x = padded[b, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()
    if mode in ("flip", "crop_flip"):
        flip = (torch.rand(total, generator=generator)[rows_of] < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x


class Loader:
    """Iterate a split in mini-batches of float32 images in [0, 1] and int64 labels.

    Args:
        split: the data (see :func:`~absnet.data.datasets.load_split`).
        batch_size: examples per batch (the last one may be smaller unless ``drop_last``).
        shuffle: draw a fresh permutation from ``generator`` at each :meth:`epoch` call.
        generator: the source of all randomness (permutation and augmentation); None uses
            torch's default generator (reproducible only under ``torch.manual_seed``).
        augment: ``"none"``, ``"flip"``, ``"crop"`` or ``"crop_flip"``.
        limit: keep only the first ``limit`` examples of the split (before shuffling).
        drop_last: drop a final incomplete batch.
        device: where batches are delivered (indexing happens on CPU, uint8 is moved, then converted).
        padding: zero padding of ``crop``.
        rank, world: deliver only this rank's part of each (global) batch of ``batch_size``.

    >>> from absnet.data.datasets import load_split
    >>> loader = Loader(load_split("digits", "test"), 100, shuffle=True, generator=torch.Generator().manual_seed(0))
    >>> len(loader), [tuple(x.shape) for x, _ in loader.epoch(start_batch=3)]
    (4, [(55, 1, 8, 8)])
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        *,
        shuffle: bool,
        generator: torch.Generator | None = None,
        augment: str = "none",
        limit: int | None = None,
        drop_last: bool = False,
        device: str | torch.device = "cpu",
        padding: int = 4,
        rank: int = 0,
        world: int = 1,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {augment!r}")
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be non-negative, got {limit}")
        if padding < 0:
            raise ValueError(f"padding must be non-negative, got {padding}")
        if not 0 <= rank < world:
            raise ValueError(f"rank must be in 0..world-1, got rank {rank} of {world}")
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = generator
        self.augment = augment
        self.drop_last = drop_last
        self.device = torch.device(device)
        self.padding = padding
        self.rank, self.world = rank, world
        self.num_examples = len(split) if limit is None else min(limit, len(split))

    def __len__(self) -> int:
        """Return the number of batches per epoch."""
        n, b = self.num_examples, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.epoch()

    def epoch(self, start_batch: int = 0, start_example: int | None = None
              ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Return one pass over the data, starting at batch ``start_batch`` of this epoch's order
        (or, given ``start_example``, with batches starting at that example of the order).

        The permutation and the epoch seed are drawn from the generator now, at the call (not at
        the first ``next``), and in the same way whatever ``start_batch`` is; skipped batches are
        never computed.
        """
        if start_batch < 0 or (start_example is not None and start_example < 0):
            raise ValueError(f"start_batch/start_example must be non-negative, got {start_batch}/{start_example}")
        gen = self.generator if self.generator is not None else torch.default_generator
        n = self.num_examples
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        seed = int(torch.randint(0, 1 << 62, (), generator=gen)) if self.augment != "none" else 0
        first = start_batch * self.batch_size if start_example is None else start_example
        return self._batches(order, seed, first)

    def batch_sizes(self, start_example: int = 0) -> list[int]:
        """The global sizes of the batches of an epoch that starts at ``start_example``.

        >>> from absnet.data.datasets import load_split
        >>> Loader(load_split("digits", "test"), 4, shuffle=False, limit=10).batch_sizes(1)
        [4, 4, 1]
        """
        n, b = self.num_examples, self.batch_size
        sizes = [min(b, n - s) for s in range(start_example, n, b)]
        return [k for k in sizes if k == b] if self.drop_last else sizes

    def _batches(self, order: torch.Tensor, seed: int, first: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        x_all, y_all = self.split.x, self.split.y
        b = self.batch_size
        for j, size in enumerate(self.batch_sizes(first)):
            s = first + j * b
            i = s // b  # the batch index (seeds its augmentation)
            idx = order[s:s + size]
            off, total = 0, size
            if self.world > 1:
                parts = idx.tensor_split(self.world)
                off = sum(len(p) for p in parts[:self.rank])
                idx = parts[self.rank]
            idx = idx.to(x_all.device)
            x = x_all.index_select(0, idx).to(self.device, non_blocking=True)
            y = y_all.index_select(0, idx).to(self.device, non_blocking=True)
            if self.augment != "none":
                x = augment_batch(x, self.augment, torch.Generator().manual_seed(batch_seed(seed, i)), self.padding,
                                  part=(off, total))
            yield x.float().div_(self.split.scale), y
