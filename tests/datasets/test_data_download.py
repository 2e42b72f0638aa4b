"""Downloading from a local HTTP server: checksums, atomic placement, and the offline error text."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from absnet.data import REMOTES, load_split
from absnet.diagnostics import AbsnetError


def _serve_mnist_test(served: Path, base: str, fakes, monkeypatch, *, md5: str | None = None) -> tuple:
    """Write fake MNIST test files into the served folder and point REMOTES at them."""
    x, y = fakes.write_idx_set(served, "test", 5)
    remotes = tuple(
        dataclasses.replace(r, urls=(base + r.filename,), md5=md5 or fakes.md5(served / r.filename))
        for r in REMOTES["mnist"]["test"]
    )
    monkeypatch.setitem(REMOTES, "mnist", {**REMOTES["mnist"], "test": remotes})
    return x, y


def _e603(**kw) -> str:
    with pytest.raises(AbsnetError) as err:
        load_split("mnist", "test", progress=False, **kw)
    assert err.value.diagnostics[0].code == "E603"
    return str(err.value)


def test_download_with_matching_checksum_lands_in_data_dir(http_root, fakes, monkeypatch, tmp_path, capsys):
    served, base = http_root
    _, y = _serve_mnist_test(served, base, fakes, monkeypatch)
    dest = tmp_path / "dl"
    s = load_split("mnist", "test", data_dir=dest, progress=True)
    assert s.y.tolist() == y.tolist() and len(s) == 5
    names = sorted(p.name for p in (dest / "mnist").iterdir())
    assert names == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    assert "t10k-images-idx3-ubyte.gz" in capsys.readouterr().err  # the tqdm bar, on stderr
    (served / "t10k-images-idx3-ubyte.gz").unlink()  # now found on disk: no second download
    assert len(load_split("mnist", "test", data_dir=dest, progress=False)) == 5


def test_download_without_data_dir_goes_to_the_cache(http_root, fakes, monkeypatch, isolated):
    served, base = http_root
    _serve_mnist_test(served, base, fakes, monkeypatch)
    s = load_split("mnist", "test", progress=False)
    assert Path(s.source) == isolated / "mnist" and (isolated / "mnist" / "t10k-labels-idx1-ubyte.gz").is_file()


def test_checksum_mismatch_is_e603_and_leaves_no_file(http_root, fakes, monkeypatch, tmp_path):
    served, base = http_root
    _serve_mnist_test(served, base, fakes, monkeypatch, md5="0" * 32)
    msg = _e603(data_dir=tmp_path / "dl")
    assert "MD5" in msg and "0" * 32 in msg and base + "t10k-images-idx3-ubyte.gz" in msg
    assert list((tmp_path / "dl" / "mnist").iterdir()) == []


@pytest.mark.parametrize("how", ["download=False", "ABSNET_OFFLINE", "unreachable", "http 404"])
def test_missing_dataset_error_says_what_was_searched_and_what_to_fetch(how, http_root, monkeypatch, tmp_path):
    kw: dict = {"data_dir": tmp_path / "dl"}
    if how == "download=False":
        kw["download"] = False
    elif how == "ABSNET_OFFLINE":
        monkeypatch.setenv("ABSNET_OFFLINE", "1")
    else:
        base = "http://127.0.0.1:9/" if how == "unreachable" else http_root[1]
        remotes = tuple(dataclasses.replace(r, urls=(base + r.filename,)) for r in REMOTES["mnist"]["test"])
        monkeypatch.setitem(REMOTES, "mnist", {**REMOTES["mnist"], "test": remotes})
    monkeypatch.setenv("ABSNET_DATA", str(tmp_path / "env"))
    msg = _e603(**kw)
    assert "'mnist'" in msg and "test split" in msg
    for root in (tmp_path / "dl", tmp_path / "env", tmp_path / "xdg" / "absnet" / "data"):
        assert str(root / "mnist") in msg
    for remote in REMOTES["mnist"]["test"]:
        assert remote.filename in msg and remote.urls[0] in msg
    assert "--data-dir" in msg and "ABSNET_DATA" in msg and "DIR/mnist/" in msg
    reason = {"download=False": "download=False", "ABSNET_OFFLINE": "ABSNET_OFFLINE=1",
              "unreachable": "cannot connect", "http 404": "HTTP 404"}[how]
    assert reason in msg
    leftovers = list((tmp_path / "dl").rglob("*")) if (tmp_path / "dl").exists() else []
    assert [p for p in leftovers if p.is_file()] == []


def test_default_urls_are_the_canonical_sources():
    assert REMOTES["mnist"]["train"][0].urls == ("https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz",)
    assert REMOTES["fashion_mnist"]["test"][1].urls[0].startswith("http://fashion-mnist.s3-website.eu-central-1")
    assert REMOTES["cifar10"]["train"][0].md5 == "c58f30108f718f92721af3b95e74349a"
    assert REMOTES["svhn"]["test"][0].urls == ("http://ufldl.stanford.edu/housenumbers/test_32x32.mat",)


def test_cifar10_tarball_download_is_verified_and_unpacked(http_root, fakes, monkeypatch, tmp_path):
    served, base = http_root
    src = tmp_path / "src"
    batches = fakes.write_cifar10(src, n=2)
    tar = fakes.make_tar(served / "cifar-10-python.tar.gz",
                         {f"cifar-10-batches-py/{n}": (src / n).read_bytes() for n in batches})
    remote = dataclasses.replace(REMOTES["cifar10"]["test"][0], urls=(base + tar.name,), md5=fakes.md5(tar))
    monkeypatch.setitem(REMOTES, "cifar10", {"train": (remote,), "test": (remote,)})
    s = load_split("cifar10", "test", data_dir=tmp_path / "dl", progress=False)
    assert len(s) == 2 and (tmp_path / "dl" / "cifar10" / "cifar-10-batches-py" / "test_batch").is_file()
