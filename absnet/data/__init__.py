"""Datasets for ``absc train`` / ``absc test``: catalog, on-disk lookup and download, mini-batches.

>>> from absnet.data import Loader, load_split
>>> split = load_split("digits", "train")
>>> x, y = next(iter(Loader(split, 32, shuffle=False)))
>>> x.dtype, y.dtype, float(x.max()) <= 1.0
(torch.float32, torch.int64, True)
"""

from absnet.data.datasets import DATASETS, DatasetInfo, Split, dataset_names, load_split
from absnet.data.download import REMOTES, cache_dir, search_roots
from absnet.data.loader import AUGMENTATIONS, Loader, augment_batch

__all__ = [
    "AUGMENTATIONS",
    "DATASETS",
    "REMOTES",
    "DatasetInfo",
    "Loader",
    "Split",
    "augment_batch",
    "cache_dir",
    "dataset_names",
    "load_split",
    "search_roots",
]
