"""Fixtures for the dataset tests: an isolated environment and writers of tiny fake dataset files."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import pickle
import tarfile
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No ABSNET_DATA/ABSNET_OFFLINE from the caller, and a private cache folder; returns the cache root."""
    monkeypatch.delenv("ABSNET_DATA", raising=False)
    monkeypatch.delenv("ABSNET_OFFLINE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    return tmp_path / "xdg" / "absnet" / "data"


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def idx_bytes(a: np.ndarray) -> bytes:
    """Encode a uint8 array (N×H×W images or N labels) as an IDX file."""
    magic = 2051 if a.ndim == 3 else 2049
    head = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in a.shape)
    return head + a.astype(np.uint8).tobytes()


def write_idx_set(folder: Path, split: str, n: int, *, seed: int = 0, gz: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Write an MNIST-format image/label pair of n random 28×28 images; return (x, y)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, n, dtype=np.uint8)
    prefix = "train" if split == "train" else "t10k"
    folder.mkdir(parents=True, exist_ok=True)
    for name, a in ((f"{prefix}-images-idx3-ubyte", x), (f"{prefix}-labels-idx1-ubyte", y)):
        data = idx_bytes(a)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data, mtime=0))
        else:
            (folder / name).write_bytes(data)
    return x, y


def cifar_batch(n: int, classes: int, label_key: bytes, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"fake",
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        label_key: [int(v) for v in rng.integers(0, classes, n)],
        b"filenames": [b"f%d.png" % i for i in range(n)],
    }


def write_cifar10(folder: Path, n: int = 2, protocol: int = 2) -> dict[str, dict]:
    """Write data_batch_1..5 and test_batch (n images each) into folder; return the dicts by name."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        out[name] = cifar_batch(n, 10, b"labels", seed=i)
        (folder / name).write_bytes(pickle.dumps(out[name], protocol=protocol))
    return out


def make_tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """Serve a fresh folder over HTTP on 127.0.0.1; yields (folder, base URL ending in '/')."""
    root = tmp_path / "served"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def fakes() -> SimpleNamespace:
    """The writers above, for tests: ``fakes.write_idx_set(...)`` etc."""
    writers = (md5, idx_bytes, write_idx_set, cifar_batch, write_cifar10, make_tar)
    return SimpleNamespace(**{f.__name__: f for f in writers})
