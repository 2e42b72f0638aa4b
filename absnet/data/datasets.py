"""The dataset catalog and the readers of each on-disk format.

``load_split(name, split)`` returns the raw images as ``uint8`` N×C×H×W and the labels as
``int64``; it never normalises (normalisation is a ``Normalize`` layer of the model, and the
``mean``/``std`` of :class:`DatasetInfo` are the conventional constants to write there).

Formats and folders (inside each search root, see :mod:`absnet.data.download`):

- ``digits``: the 1,797 8×8 digits shipped inside scikit-learn (``digits.csv.gz``); nothing to
  download. Pixels are 0..16 and are kept as such (``Split.scale == 16``). Fixed split, no
  randomness: in file order, the k-th example of each class goes to *test* when ``k % 5 == 4``,
  else to *train* (stratified 80/20: 1,442 train, 355 test).
- ``mnist`` (``mnist/`` or ``MNIST/raw/``), ``fashion_mnist`` (``fashion_mnist/``,
  ``fashion-mnist/`` or ``FashionMNIST/raw/``): the four IDX files, gzipped or not.
- ``cifar10`` (``cifar10/``): ``cifar-10-batches-py/`` inside it, or the batch files directly, or
  ``cifar-10-python.tar.gz`` (checked and unpacked in place). If none of these is anywhere but
  ERAN's ``cifar10_test.csv`` is, the *test* split is read from it (only the first 100 test
  images) and the *train* split is missing.
- ``cifar100`` (``cifar100/``): ``cifar-100-python/{train,test}``, the files directly, or
  ``cifar-100-python.tar.gz``; fine labels (100 classes).
- ``svhn`` (``svhn/``): ``train_32x32.mat``, ``test_32x32.mat``; label 10 means digit 0.

CIFAR pickles are read with an unpickler that only accepts numpy's array-reconstruction
functions; any other global (a class, ``os.system``, …) is refused before anything runs.
"""

from __future__ import annotations

import contextlib
import gzip
import importlib.resources
import importlib.util
import os
import struct
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from absnet.data.download import (
    FOLDERS,
    IDX_FILES,
    REMOTES,
    DownloadFailed,
    corrupt_error,
    download_root,
    extract_tar,
    fetch,
    md5sum,
    missing_error,
    search_roots,
    unpickle_arrays,
    why_not_downloading,
)
from absnet.diagnostics import AbsnetError, Diagnostic, did_you_mean

SPLITS = ("train", "test")


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is: input shape (C, H, W), class count, and conventional mean/std per channel."""

    name: str
    input_shape: tuple[int, ...]
    classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    description: str


DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo(
        "digits", (1, 8, 8), 10, (0.3051,), (0.3762,),
        "scikit-learn's 8x8 handwritten digits (UCI optdigits test part), 1442 train / 355 test, embedded",
    ),
    "mnist": DatasetInfo(
        "mnist", (1, 28, 28), 10, (0.1307,), (0.3081,), "MNIST handwritten digits, 60000 train / 10000 test",
    ),
    "fashion_mnist": DatasetInfo(
        "fashion_mnist", (1, 28, 28), 10, (0.2860,), (0.3530,),
        "Fashion-MNIST clothing images (Zalando), 60000 train / 10000 test",
    ),
    "cifar10": DatasetInfo(
        "cifar10", (3, 32, 32), 10, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010),
        "CIFAR-10 colour images, 50000 train / 10000 test",
    ),
    "cifar100": DatasetInfo(
        "cifar100", (3, 32, 32), 100, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010),
        "CIFAR-100 colour images (fine labels), 50000 train / 10000 test",
    ),
    "svhn": DatasetInfo(
        "svhn", (3, 32, 32), 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970),
        "SVHN street-view house numbers (cropped digits), 73257 train / 26032 test",
    ),
}


def dataset_names() -> list[str]:
    """Return the dataset names in catalog order.

    >>> dataset_names()[:2]
    ['digits', 'mnist']
    """
    return list(DATASETS)


@dataclass
class Split:
    """One split in memory: ``x`` uint8 N×C×H×W, ``y`` int64 N, and where it came from.

    Pixel value ``v`` means intensity ``v / scale`` in [0, 1]: ``scale`` is 255 except for
    ``digits`` (16), whose pixels are stored exactly as shipped.
    """

    x: torch.Tensor
    y: torch.Tensor
    info: DatasetInfo
    source: str
    scale: float = 255.0

    def __post_init__(self) -> None:
        if self.x.dtype != torch.uint8 or self.x.dim() != 4:
            raise ValueError(f"Split.x must be uint8 N×C×H×W, got {self.x.dtype} {tuple(self.x.shape)}")
        if self.y.dtype != torch.int64 or self.y.dim() != 1 or self.y.shape[0] != self.x.shape[0]:
            got = f"{self.y.dtype} {tuple(self.y.shape)}"
            raise ValueError(f"Split.y must be int64 of length {self.x.shape[0]}, got {got}")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def images(self) -> torch.Tensor:
        """Return all images as float32 in [0, 1]."""
        return self.x.float() / self.scale


# --- IDX (MNIST, Fashion-MNIST) -------------------------------------------------------------------


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except PermissionError as e:
        raise AbsnetError(Diagnostic("E603", f"cannot read dataset file {path}: {e.strerror}")) from None
    except (OSError, EOFError, zlib.error) as e:
        raise corrupt_error(path, f"cannot decompress it ({e or type(e).__name__}; truncated download?)") from None


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Read one IDX file (2051: uint8 images N×H×W, 2049: uint8 labels N), checking its header."""
    raw = _read_bytes(path)
    ndim = magic - 2048
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise corrupt_error(path, f"only {len(raw)} bytes, shorter than an IDX header (truncated?)")
    got = int.from_bytes(raw[:4], "big")
    if got != magic:
        kind = "images" if magic == 2051 else "labels"
        raise corrupt_error(path, f"bad IDX magic number {got}, expected {magic} for an {kind} file")
    dims = struct.unpack(f">{ndim}I", raw[4:head])
    need = int(np.prod(dims))
    if len(raw) - head != need:
        got = len(raw) - head
        raise corrupt_error(path, f"{got} bytes of data but the header announces {dims} = {need} (truncated?)")
    return np.frombuffer(raw, np.uint8, offset=head).reshape(dims).copy()


class _Idx:
    def locate(self, d: Path, split: str) -> tuple[Path, Path] | None:
        found = []
        for base in IDX_FILES[split]:
            hit = next((p for p in (d / f"{base}.gz", d / base) if p.is_file()), None)
            if hit is None:
                return None
            found.append(hit)
        return found[0], found[1]

    def read(self, hit: Any, split: str) -> tuple[np.ndarray, np.ndarray, str]:
        images, labels = hit
        x, y = read_idx(images, 2051), read_idx(labels, 2049)
        if len(x) != len(y):
            raise corrupt_error(labels, f"{len(y)} labels for the {len(x)} images of {images}")
        return x[:, None], y, str(images.parent)


# --- CIFAR (python pickles, ERAN's CSV) -----------------------------------------------------------


class _CifarPickle:
    def __init__(self, dataset: str, sub: str, files: dict[str, tuple[str, ...]], label_key: bytes, tarball: str):
        self.dataset, self.sub, self.files, self.label_key, self.tarball = dataset, sub, files, label_key, tarball

    def locate(self, d: Path, split: str) -> Path | None:
        names = self.files[split]
        for cand in (d / self.sub, d):
            if all((cand / n).is_file() for n in names):
                return cand
        tar = d / self.tarball
        if not tar.is_file():
            return None
        want = REMOTES[self.dataset]["train"][0].md5
        got = md5sum(tar)
        if got != want:
            raise corrupt_error(tar, f"its MD5 is {got}, expected {want} (incomplete download?)")
        try:
            extract_tar(tar, d)
        except OSError:
            return tar  # read-only folder: read the members straight from the archive
        if all((d / self.sub / n).is_file() for n in names):
            return d / self.sub
        raise corrupt_error(tar, f"the archive holds no {self.sub}/{{{','.join(names)}}}")

    def read(self, hit: Any, split: str) -> tuple[np.ndarray, np.ndarray, str]:
        with contextlib.ExitStack() as stack:
            tar = None if hit.is_dir() else stack.enter_context(tarfile.open(hit, "r:*"))
            parts = [self._read_batch(hit, tar, name) for name in self.files[split]]
        return np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts]), str(hit)

    def _read_batch(self, hit: Path, tar: tarfile.TarFile | None, name: str) -> tuple[np.ndarray, np.ndarray]:
        if tar is None:
            with open(hit / name, "rb") as f:
                return self._check(unpickle_arrays(f, hit / name), hit / name)
        where = f"{hit}:{self.sub}/{name}"
        try:
            member = tar.extractfile(f"{self.sub}/{name}")
        except KeyError:
            member = None
        if member is None:
            raise corrupt_error(hit, f"{self.sub}/{name} is not a file in the archive")
        return self._check(unpickle_arrays(member, where), where)

    def _check(self, batch: Any, where: str | Path) -> tuple[np.ndarray, np.ndarray]:
        if not isinstance(batch, dict) or b"data" not in batch or self.label_key not in batch:
            raise corrupt_error(where, f"expected a dict with keys b'data' and {self.label_key!r}")
        data, labels = batch[b"data"], np.asarray(batch[self.label_key])
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise corrupt_error(where, "b'data' is not a uint8 array of shape (n, 3072)")
        if labels.ndim != 1 or len(labels) != len(data) or labels.dtype.kind not in "iu":
            raise corrupt_error(where, f"{self.label_key!r} is not a list of {len(data)} integer labels")
        return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def read_cifar_csv(path: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """Read ERAN's ``cifar10_test.csv``: per line the label, then 3072 values 0..255 in HWC order."""
    try:
        a = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)
    except (ValueError, OSError) as e:
        raise corrupt_error(path, f"not a CSV of integers ({e})") from None
    if a.shape[1] != 1 + 3072 or a.size == 0 or a[:, 1:].min() < 0 or a[:, 1:].max() > 255:
        raise corrupt_error(path, "expected lines of a label and 3072 pixel values 0..255")
    x = a[:, 1:].astype(np.uint8).reshape(-1, 32, 32, 3).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x), a[:, 0], str(path)


# --- SVHN (MATLAB files) --------------------------------------------------------------------------


class _Svhn:
    def locate(self, d: Path, split: str) -> Path | None:
        p = d / f"{split}_32x32.mat"
        return p if p.is_file() else None

    def read(self, hit: Any, split: str) -> tuple[np.ndarray, np.ndarray, str]:
        import scipy.io

        try:
            m = scipy.io.loadmat(hit, variable_names=("X", "y"))
        except Exception as e:  # scipy raises ValueError, TypeError, MatReadError, … on damage
            raise corrupt_error(hit, f"cannot read it as a MATLAB file ({type(e).__name__}: {e})") from None
        x, y = m.get("X"), m.get("y")
        if x is None or y is None or x.ndim != 4 or x.shape[:3] != (32, 32, 3) or y.size != x.shape[3]:
            raise corrupt_error(hit, "expected X of shape (32, 32, 3, n) and y of n labels")
        y = y.reshape(-1).astype(np.int64)
        y[y == 10] = 0  # SVHN writes digit 0 as label 10
        return np.ascontiguousarray(x.transpose(3, 2, 0, 1)).astype(np.uint8, copy=False), y, str(hit)


_FORMATS: dict[str, Any] = {
    "mnist": _Idx(),
    "fashion_mnist": _Idx(),
    "cifar10": _CifarPickle(
        "cifar10", "cifar-10-batches-py",
        {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
        b"labels", "cifar-10-python.tar.gz",
    ),
    "cifar100": _CifarPickle(
        "cifar100", "cifar-100-python", {"train": ("train",), "test": ("test",)},
        b"fine_labels", "cifar-100-python.tar.gz",
    ),
    "svhn": _Svhn(),
}


# --- digits (embedded) ----------------------------------------------------------------------------


def _digits_file() -> Path:
    spec = importlib.util.find_spec("sklearn")
    if spec is not None and spec.submodule_search_locations:
        p = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
        if p.is_file():
            return p
    return Path(str(importlib.resources.files("sklearn.datasets") / "data" / "digits.csv.gz"))


def _load_digits(split: str) -> tuple[np.ndarray, np.ndarray, str]:
    path = _digits_file()
    with gzip.open(path, "rt") as f:
        a = np.loadtxt(f, delimiter=",", dtype=np.float64, ndmin=2).astype(np.int64)
    x, y = a[:, :64].astype(np.uint8).reshape(-1, 1, 8, 8), a[:, 64]
    rank = np.zeros(len(y), dtype=np.int64)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rank[idx] = np.arange(len(idx))
    keep = (rank % 5 == 4) if split == "test" else (rank % 5 != 4)
    return np.ascontiguousarray(x[keep]), y[keep], str(path)


# --- lookup -------------------------------------------------------------------------------------


def _info(name: str) -> DatasetInfo:
    key = name.strip().lower().replace("-", "_")
    if key not in DATASETS:
        hint = did_you_mean(name, DATASETS)
        raise AbsnetError(Diagnostic(
            "E603", f"unknown dataset '{name}'" + (f"; {hint}" if hint else ""),
            help=f"use one of: {', '.join(DATASETS)}",
        ))
    return DATASETS[key]


def load_split(
    name: str,
    split: str = "train",
    *,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    progress: bool = True,
) -> Split:
    """Load one split of a dataset, downloading it into the cache (or ``data_dir``) if absent.

    Args:
        name: a key of :data:`DATASETS` (``-`` is accepted for ``_``).
        split: ``"train"`` or ``"test"``.
        data_dir: searched first, and where downloads go (else the cache folder).
        download: fetch missing files (also turned off by ``ABSNET_OFFLINE=1``).
        progress: show a progress bar on stderr while downloading.

    Returns:
        The raw split (uint8 images, int64 labels); nothing is normalised. CIFAR-10 only: when no
        root holds the real batches or tarball but one holds ERAN's ``cifar10_test.csv``, the
        test split is read from that CSV (the first 100 test images, no download is tried) and
        the train split is reported missing.

    Raises:
        AbsnetError: E603 for an unknown name, missing files that cannot be downloaded (the
            message lists the folders searched and the URLs to fetch by hand), or a corrupt file.

    >>> s = load_split("digits", "test")
    >>> len(s), tuple(s.x.shape[1:]), s.scale
    (355, (1, 8, 8), 16.0)
    """
    info = _info(name)
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    scale = 255.0
    if info.name == "digits":
        x, y, source = _load_digits(split)
        scale = 16.0
    else:
        x, y, source = _find_or_fetch(info.name, split, data_dir, download, progress)
    if tuple(x.shape[1:]) != info.input_shape:
        raise corrupt_error(source, f"images have shape {tuple(x.shape[1:])}, expected {info.input_shape}")
    if len(y) and (y.min() < 0 or y.max() >= info.classes):
        raise corrupt_error(source, f"labels range over {y.min()}..{y.max()}, expected 0..{info.classes - 1}")
    return Split(torch.from_numpy(x), torch.from_numpy(y.astype(np.int64, copy=False)), info, source, scale)


def _find_or_fetch(
    name: str, split: str, data_dir: str | os.PathLike[str] | None, download: bool, progress: bool,
) -> tuple[np.ndarray, np.ndarray, str]:
    fmt = _FORMATS[name]
    dirs = [root / folder for root in search_roots(data_dir) for folder in FOLDERS[name]]
    for d in dirs:
        hit = fmt.locate(d, split)
        if hit is not None:
            return fmt.read(hit, split)
    if name == "cifar10" and split == "test":
        for d in dirs:
            if (d / "cifar10_test.csv").is_file():
                return read_cifar_csv(d / "cifar10_test.csv")
    remotes = REMOTES[name][split]
    reason = why_not_downloading(download)
    if reason is None:
        target = download_root(data_dir) / FOLDERS[name][0]
        try:
            for remote in remotes:
                if not (target / remote.filename).is_file():
                    fetch(remote, target, progress=progress)
        except DownloadFailed as e:
            reason = f"the download failed: {e}"
        else:
            hit = fmt.locate(target, split)
            if hit is None:
                raise corrupt_error(target, f"the downloaded files do not hold the {split} split of {name}")
            return fmt.read(hit, split)
    if name == "cifar10" and any((d / "cifar10_test.csv").is_file() for d in dirs):
        reason += " (ERAN's cifar10_test.csv was found, but it holds only 100 test images and no train split)"
    raise missing_error(name, split, dirs, remotes, FOLDERS[name][0], reason)
