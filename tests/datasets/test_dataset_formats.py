"""Each on-disk format, read from tiny fake files; the lookup order; corrupt and unsafe files."""

from __future__ import annotations

import dataclasses
import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from absnet.data import DATASETS, REMOTES, Loader, dataset_names, load_split
from absnet.diagnostics import AbsnetError


def _e603(fn, *args, **kw) -> str:
    with pytest.raises(AbsnetError) as err:
        fn(*args, **kw)
    assert err.value.diagnostics[0].code == "E603"
    return str(err.value)


def test_catalog_lists_the_six_datasets_with_their_shapes():
    assert dataset_names() == ["digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "svhn"]
    assert DATASETS["cifar100"].classes == 100 and DATASETS["svhn"].input_shape == (3, 32, 32)
    assert all(len(i.mean) == len(i.std) == i.input_shape[0] for i in DATASETS.values())


def test_unknown_dataset_name_suggests_the_closest():
    assert "did you mean 'mnist'" in _e603(load_split, "mnsit")


# --- digits ---------------------------------------------------------------------------------------


def test_digits_split_is_fixed_stratified_and_covers_all_1797_images():
    train, test = load_split("digits", "train"), load_split("digits", "test")
    assert (len(train), len(test)) == (1442, 355) and len(train) + len(test) == 1797
    assert tuple(train.x.shape[1:]) == (1, 8, 8) and train.info.classes == 10
    per_class = torch.bincount(train.y) + torch.bincount(test.y)
    assert per_class.tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    assert torch.bincount(test.y).tolist() == [n // 5 for n in per_class.tolist()]
    assert int(train.x.max()) == 16 and train.scale == 16.0
    again = load_split("digits", "test")
    assert torch.equal(again.x, test.x) and torch.equal(again.y, test.y)
    x, _ = next(Loader(train, 2000, shuffle=False).epoch())
    assert float(x.max()) == 1.0 and float(x.min()) == 0.0


# --- IDX --------------------------------------------------------------------------------------------


def test_idx_files_load_gzipped_or_raw_in_every_accepted_folder(tmp_path, fakes):
    x, y = fakes.write_idx_set(tmp_path / "a" / "mnist", "test", 5)
    s = load_split("mnist", "test", data_dir=tmp_path / "a", download=False)
    assert torch.equal(s.x[:, 0], torch.from_numpy(x)) and s.y.tolist() == y.tolist()
    x, _ = fakes.write_idx_set(tmp_path / "b" / "MNIST" / "raw", "train", 3, gz=False)
    s = load_split("mnist", "train", data_dir=tmp_path / "b", download=False)
    assert torch.equal(s.x[:, 0], torch.from_numpy(x))
    for folder in ("fashion_mnist", "fashion-mnist"):
        fakes.write_idx_set(tmp_path / folder / folder, "test", 4)
        assert len(load_split("fashion_mnist", "test", data_dir=tmp_path / folder, download=False)) == 4


def test_lookup_order_is_data_dir_then_absnet_data_then_cache(tmp_path, fakes, isolated, monkeypatch):
    for root, n in ((tmp_path / "dir", 1), (tmp_path / "env", 2), (isolated, 3)):
        fakes.write_idx_set(root / "mnist", "test", n)
    monkeypatch.setenv("ABSNET_DATA", str(tmp_path / "env"))
    assert len(load_split("mnist", "test", data_dir=tmp_path / "dir", download=False)) == 1
    assert len(load_split("mnist", "test", download=False)) == 2
    monkeypatch.delenv("ABSNET_DATA")
    assert len(load_split("mnist", "test", download=False)) == 3


def test_bad_idx_magic_and_truncated_files_are_e603_naming_the_file(tmp_path, fakes):
    folder = tmp_path / "mnist"
    fakes.write_idx_set(folder, "test", 5)
    labels = folder / "t10k-labels-idx1-ubyte.gz"
    good = labels.read_bytes()
    labels.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + gzip.decompress(good)[4:]))
    msg = _e603(load_split, "mnist", "test", data_dir=tmp_path, download=False)
    assert str(labels) in msg and "magic" in msg and "delete" in msg
    labels.write_bytes(gzip.compress(gzip.decompress(good)[:-2]))
    assert "truncated" in _e603(load_split, "mnist", "test", data_dir=tmp_path, download=False)
    labels.write_bytes(good[: len(good) // 2])
    assert str(labels) in _e603(load_split, "mnist", "test", data_dir=tmp_path, download=False)


# --- CIFAR ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10_python_batches_load_in_chw_order(tmp_path, fakes, protocol):
    batches = fakes.write_cifar10(tmp_path / "cifar10" / "cifar-10-batches-py", n=2, protocol=protocol)
    train = load_split("cifar10", "train", data_dir=tmp_path, download=False)
    test = load_split("cifar10", "test", data_dir=tmp_path, download=False)
    assert tuple(train.x.shape) == (10, 3, 32, 32) and len(test) == 2
    first = batches["data_batch_1"]
    assert torch.equal(train.x[0], torch.from_numpy(first[b"data"][0].reshape(3, 32, 32)))
    assert train.y[:2].tolist() == first[b"labels"] and test.y.tolist() == batches["test_batch"][b"labels"]


def test_cifar10_batches_may_sit_directly_in_the_folder(tmp_path, fakes):
    fakes.write_cifar10(tmp_path / "cifar10", n=3)
    assert len(load_split("cifar10", "test", data_dir=tmp_path, download=False)) == 3


def test_cifar100_uses_fine_labels(tmp_path, fakes):
    folder = tmp_path / "cifar100" / "cifar-100-python"
    folder.mkdir(parents=True)
    for i, name in enumerate(("train", "test")):
        batch = fakes.cifar_batch(4, 100, b"fine_labels", seed=i)
        batch[b"coarse_labels"] = [0, 1, 2, 3]
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        s = load_split("cifar100", name, data_dir=tmp_path, download=False)
        assert s.y.tolist() == batch[b"fine_labels"] and s.info.classes == 100


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_with_a_forbidden_global_is_refused_and_never_run(tmp_path, fakes):
    folder = tmp_path / "cifar10"
    fakes.write_cifar10(folder, n=1)
    marker = tmp_path / "pwned"
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": _Evil(marker), b"labels": [0]}, protocol=2))
    msg = _e603(load_split, "cifar10", "test", data_dir=tmp_path, download=False)
    assert "forbidden global" in msg and "system" in msg and str(folder / "test_batch") in msg
    assert not marker.exists()
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((1, 5), np.uint8), b"labels": [0]}))
    assert "(n, 3072)" in _e603(load_split, "cifar10", "test", data_dir=tmp_path, download=False)


def _expect_cifar10_md5(monkeypatch, md5: str) -> None:
    remote = dataclasses.replace(REMOTES["cifar10"]["test"][0], md5=md5)
    monkeypatch.setitem(REMOTES, "cifar10", {"train": (remote,), "test": (remote,)})


def test_cifar10_tarball_is_checked_and_unpacked_in_place(tmp_path, fakes, monkeypatch):
    src = tmp_path / "src"
    batches = fakes.write_cifar10(src, n=2)
    folder = tmp_path / "root" / "cifar10"
    folder.mkdir(parents=True)
    tar = fakes.make_tar(folder / "cifar-10-python.tar.gz",
                         {f"cifar-10-batches-py/{n}": (src / n).read_bytes() for n in batches})
    _expect_cifar10_md5(monkeypatch, "0" * 32)
    assert "MD5" in _e603(load_split, "cifar10", "test", data_dir=tmp_path / "root", download=False)
    assert not (folder / "cifar-10-batches-py").exists()
    _expect_cifar10_md5(monkeypatch, fakes.md5(tar))
    s = load_split("cifar10", "train", data_dir=tmp_path / "root", download=False)
    assert len(s) == 10 and (folder / "cifar-10-batches-py" / "data_batch_5").is_file()
    assert sorted(p.name for p in folder.iterdir()) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]


def test_tarball_with_path_traversal_is_refused(tmp_path, fakes, monkeypatch):
    folder = tmp_path / "root" / "cifar10"
    folder.mkdir(parents=True)
    tar = fakes.make_tar(folder / "cifar-10-python.tar.gz", {"cifar-10-batches-py/../../../escaped": b"x"})
    _expect_cifar10_md5(monkeypatch, fakes.md5(tar))
    assert "unsafe" in _e603(load_split, "cifar10", "test", data_dir=tmp_path / "root", download=False)
    assert not list(tmp_path.rglob("escaped"))
    assert sorted(p.name for p in folder.iterdir()) == ["cifar-10-python.tar.gz"]


def test_eran_csv_is_hwc_and_serves_only_the_test_split(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (2, 32, 32, 3))
    rows = [",".join(map(str, [lab, *img.reshape(-1)])) for lab, img in zip((7, 2), pixels)]
    (tmp_path / "cifar10").mkdir()
    (tmp_path / "cifar10" / "cifar10_test.csv").write_text("\n".join(rows) + "\n")
    s = load_split("cifar10", "test", data_dir=tmp_path, download=False)
    assert s.y.tolist() == [7, 2] and torch.equal(s.x[1], torch.from_numpy(pixels[1].transpose(2, 0, 1)).byte())
    assert "only 100 test images" in _e603(load_split, "cifar10", "train", data_dir=tmp_path, download=False)


# --- SVHN -------------------------------------------------------------------------------------------


def test_svhn_mat_loads_with_label_10_as_0(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (32, 32, 3, 4), dtype=np.uint8)
    (tmp_path / "svhn").mkdir()
    scipy.io.savemat(tmp_path / "svhn" / "test_32x32.mat", {"X": X, "y": np.array([[10], [1], [2], [10]], np.uint8)})
    s = load_split("svhn", "test", data_dir=tmp_path, download=False)
    assert tuple(s.x.shape) == (4, 3, 32, 32) and s.y.tolist() == [0, 1, 2, 0]
    assert int(s.x[2, 1, 5, 7]) == int(X[5, 7, 1, 2])
    (tmp_path / "svhn" / "test_32x32.mat").write_bytes(b"not a mat file at all")
    assert "MATLAB" in _e603(load_split, "svhn", "test", data_dir=tmp_path, download=False)


def test_tarball_in_a_read_only_folder_is_read_in_place(tmp_path, fakes, monkeypatch):
    src = tmp_path / "src"
    batches = fakes.write_cifar10(src, n=2)
    folder = tmp_path / "root" / "cifar10"
    folder.mkdir(parents=True)
    tar = fakes.make_tar(folder / "cifar-10-python.tar.gz",
                         {f"cifar-10-batches-py/{n}": (src / n).read_bytes() for n in batches})
    _expect_cifar10_md5(monkeypatch, fakes.md5(tar))

    def read_only(archive: Path, dest: Path) -> None:
        raise PermissionError(13, "Permission denied", str(dest))

    monkeypatch.setattr("absnet.data.datasets.extract_tar", read_only)
    s = load_split("cifar10", "train", data_dir=tmp_path / "root", download=False)
    assert len(s) == 10 and s.source == str(tar) and not (folder / "cifar-10-batches-py").exists()
    assert s.y[:2].tolist() == batches["data_batch_1"][b"labels"]
