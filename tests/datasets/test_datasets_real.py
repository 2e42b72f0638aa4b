"""The real MNIST, Fashion-MNIST and ERAN CIFAR-10 files of the shared data folder."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from absnet.data import load_split
from absnet.diagnostics import AbsnetError

ROOT = Path(os.environ.get("ABSNET_DATA", Path(__file__).resolve().parents[2] / ".." / "shared" / "data")).resolve()


def _need(folder: str, name: str) -> None:
    if not (ROOT / folder).is_dir():
        pytest.skip(f"{name} not found in {ROOT / folder}: set ABSNET_DATA")


def test_mnist_has_60000_train_and_10000_test_images_in_0_255():
    _need("mnist", "MNIST")
    start = time.perf_counter()
    train = load_split("mnist", "train", data_dir=ROOT, download=False)
    elapsed = time.perf_counter() - start
    test = load_split("mnist", "test", data_dir=ROOT, download=False)
    assert elapsed < 2.0, f"loading MNIST train took {elapsed:.2f} s"
    assert tuple(train.x.shape) == (60000, 1, 28, 28) and len(train) == 60000
    assert tuple(test.x.shape) == (10000, 1, 28, 28) and len(test) == 10000
    assert train.x.dtype == torch.uint8 and train.y.dtype == torch.int64
    assert int(test.x.min()) == 0 and int(test.x.max()) == 255 and train.scale == 255.0
    counts = torch.bincount(test.y, minlength=10).tolist()
    assert counts == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert torch.bincount(train.y).tolist()[:3] == [5923, 6742, 5958]
    assert test.info.classes == 10 and test.info.mean == (0.1307,)


def test_fashion_mnist_is_balanced_over_ten_classes():
    _need("fashion-mnist", "Fashion-MNIST")
    train = load_split("fashion_mnist", "train", data_dir=ROOT, download=False)
    test = load_split("fashion-mnist", "test", data_dir=ROOT, download=False)
    assert tuple(train.x.shape) == (60000, 1, 28, 28) and tuple(test.x.shape) == (10000, 1, 28, 28)
    assert torch.bincount(train.y).tolist() == [6000] * 10
    assert torch.bincount(test.y).tolist() == [1000] * 10
    assert 0 <= int(test.x.min()) and int(test.x.max()) == 255


def test_cifar10_test_split_comes_from_eran_csv_and_train_split_is_missing():
    _need("cifar10", "ERAN's cifar10_test.csv")
    test = load_split("cifar10", "test", data_dir=ROOT, download=False)
    assert tuple(test.x.shape) == (100, 3, 32, 32) and test.x.dtype == torch.uint8
    assert test.y[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert test.source.endswith("cifar10_test.csv")
    with pytest.raises(AbsnetError) as err:
        load_split("cifar10", "train", data_dir=ROOT, download=False)
    msg = str(err.value)
    assert "E603" in msg and "cifar10" in msg and "cifar10_test.csv" in msg and "cifar-10-python.tar.gz" in msg
