"""Where dataset files are looked for, where they come from, and how they are fetched and unpacked.

:data:`REMOTES` lists the canonical URL and MD5 of every file to fetch; :data:`FOLDERS` the folder
names accepted inside a search root.

Search order (first match wins): the ``data_dir`` argument (``absc --data-dir``), the
``ABSNET_DATA`` environment variable (one folder, or several joined by ``os.pathsep``), and the
cache folder ``$XDG_CACHE_HOME/absnet/data`` (default ``~/.cache/absnet/data``). Downloads go to
``data_dir`` when one is given, otherwise to the cache folder.

A download is written to a hidden temporary file beside its destination and renamed into place
only after its MD5 matched, so an interrupted or corrupt download never leaves a file that looks
complete. ``ABSNET_OFFLINE=1`` (or ``download=False``) turns downloading off. Archives are
unpacked all-or-nothing, refusing absolute paths, ``..`` and links; pickles are read by an
unpickler that only knows numpy's array-reconstruction functions.
"""

from __future__ import annotations

import codecs
import contextlib
import gzip
import hashlib
import http.client
import os
import pickle
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import numpy as np

from absnet.diagnostics import AbsnetError, Diagnostic

ENV_DATA = "ABSNET_DATA"
ENV_OFFLINE = "ABSNET_OFFLINE"
TIMEOUT_S = 60.0
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Remote:
    """One file to fetch: its name on disk, the URLs to try in order, and its MD5."""

    filename: str
    urls: tuple[str, ...]
    md5: str


_MNIST_URLS = ("https://ossci-datasets.s3.amazonaws.com/mnist/",)
_FASHION_URLS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _idx_remotes(bases: tuple[str, ...], md5: dict[str, str]) -> dict[str, tuple[Remote, ...]]:
    return {
        split: tuple(Remote(f"{f}.gz", tuple(b + f"{f}.gz" for b in bases), md5[f]) for f in files)
        for split, files in IDX_FILES.items()
    }


def _both(remote: Remote) -> dict[str, tuple[Remote, ...]]:
    return {"train": (remote,), "test": (remote,)}


#: What to download for each (dataset, split); tests and mirrors may replace entries.
REMOTES: dict[str, dict[str, tuple[Remote, ...]]] = {
    "mnist": _idx_remotes(_MNIST_URLS, {
        "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
    }),
    "fashion_mnist": _idx_remotes(_FASHION_URLS, {
        "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
    }),
    "cifar10": _both(Remote(
        "cifar-10-python.tar.gz", ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
        "c58f30108f718f92721af3b95e74349a",
    )),
    "cifar100": _both(Remote(
        "cifar-100-python.tar.gz", ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",),
        "eb9058c3a382ffc7106e4002c42a8d85",
    )),
    "svhn": {
        "train": (Remote("train_32x32.mat", ("http://ufldl.stanford.edu/housenumbers/train_32x32.mat",),
                         "e26dedcc434d2e4c54c9b2d4a06d8373"),),
        "test": (Remote("test_32x32.mat", ("http://ufldl.stanford.edu/housenumbers/test_32x32.mat",),
                        "eb5a983be6a315427106f1b164d9cef3"),),
    },
}

#: Folder names accepted inside a search root; the first one is where downloads go.
FOLDERS: dict[str, tuple[str, ...]] = {
    "mnist": ("mnist", "MNIST/raw"),
    "fashion_mnist": ("fashion_mnist", "fashion-mnist", "FashionMNIST/raw"),
    "cifar10": ("cifar10",),
    "cifar100": ("cifar100",),
    "svhn": ("svhn",),
}


class DownloadFailed(Exception):
    """Every URL of a :class:`Remote` failed; ``str(err)`` says why, URL by URL."""


def cache_dir() -> Path:
    """Return the cache folder: ``$XDG_CACHE_HOME/absnet/data`` or ``~/.cache/absnet/data``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "absnet" / "data"


def search_roots(data_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Return the folders searched for datasets, in order, without duplicates.

    >>> search_roots("/tmp/x")[0]
    PosixPath('/tmp/x')
    """
    roots: list[Path] = []
    if data_dir is not None:
        roots.append(Path(data_dir).expanduser())
    env = os.environ.get(ENV_DATA, "")
    roots.extend(Path(p).expanduser() for p in env.split(os.pathsep) if p.strip())
    roots.append(cache_dir())
    seen: set[str] = set()
    out = []
    for r in roots:
        key = os.path.abspath(r)
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def download_root(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the folder downloads go to: ``data_dir`` if given, else the cache folder."""
    return Path(data_dir).expanduser() if data_dir is not None else cache_dir()


def offline() -> bool:
    """True when ``ABSNET_OFFLINE`` is set to 1/true/yes/on."""
    return os.environ.get(ENV_OFFLINE, "").strip().lower() in ("1", "true", "yes", "on")


def md5sum(path: str | os.PathLike[str]) -> str:
    """Return the hex MD5 of a file, read in 1 MiB chunks."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(remote: Remote, folder: Path, *, progress: bool = True, timeout: float = TIMEOUT_S) -> Path:
    """Download ``remote`` into ``folder/remote.filename``, verifying its MD5; return the path.

    Each URL is tried in turn; data is streamed into a temporary file in ``folder`` that is renamed
    into place only once its MD5 matched, and removed on any failure.

    Raises:
        DownloadFailed: no URL produced a file with the expected MD5 (network error, HTTP error,
            checksum mismatch); the message lists every attempt.
    """
    from tqdm import tqdm

    dest = folder / remote.filename
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadFailed(f"cannot create {folder}: {e.strerror or e}") from None
    reasons = []
    for url in remote.urls:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{remote.filename}.", suffix=".part")
        try:
            h = hashlib.md5(usedforsecurity=False)
            req = urllib.request.Request(url, headers={"User-Agent": "absnet-data/1"})
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(req, timeout=timeout) as resp:
                total = resp.headers.get("Content-Length")
                bar = tqdm(
                    total=int(total) if total and total.isdigit() else None, unit="B", unit_scale=True,
                    unit_divisor=1024, desc=remote.filename, file=sys.stderr, disable=not progress, leave=False,
                )
                with bar:
                    for chunk in iter(lambda resp=resp: resp.read(_CHUNK), b""):
                        out.write(chunk)
                        h.update(chunk)
                        bar.update(len(chunk))
            got = h.hexdigest()
            if got != remote.md5:
                reasons.append(f"{url}: the downloaded file's MD5 is {got}, expected {remote.md5}")
                continue
            os.replace(tmp, dest)
            return dest
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
            reasons.append(f"{url}: {_why(e)}")
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    raise DownloadFailed("; ".join(reasons) if reasons else f"no URL known for {remote.filename}")


def _why(e: BaseException) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        return f"cannot connect ({e.reason})"
    if isinstance(e, OSError):
        return e.strerror or str(e) or type(e).__name__
    return str(e) or type(e).__name__


_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]
_FROMBUFFER = np.ndarray.__reduce_ex__(np.zeros(1), 5)[0]
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,  # how protocol-2 pickles written by Python 3 spell bytes
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only; every other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"forbidden global {module}.{name}") from None


def unpickle_arrays(f: BinaryIO, where: str | Path) -> Any:
    """Load a pickle that may only hold builtins and numpy arrays (E603 otherwise)."""
    try:
        return _ArrayUnpickler(f, encoding="bytes").load()
    except pickle.UnpicklingError as e:
        raise corrupt_error(where, f"refused to unpickle it: {e} (only numpy arrays are allowed)") from None
    except Exception as e:  # a damaged pickle can raise almost anything
        raise corrupt_error(where, f"cannot unpickle it ({type(e).__name__}: {e})") from None


def corrupt_error(path: str | os.PathLike[str], problem: str) -> AbsnetError:
    """Return the E603 error for a dataset file that exists but cannot be used."""
    return AbsnetError(Diagnostic(
        "E603", f"dataset file {path} is corrupt or not the expected file: {problem}",
        help=f"delete {path} and run again to download it afresh, or replace it with the original file",
    ))


def missing_error(
    dataset: str,
    split: str,
    searched: Sequence[Path],
    remotes: Sequence[Remote],
    folder: str,
    reason: str,
) -> AbsnetError:
    """Return the E603 error for a dataset that is neither on disk nor downloadable.

    The message names the dataset, every folder searched, why no download happened, the exact
    files and URLs to fetch by hand, and where to put them.
    """
    where = ", ".join(str(p) for p in searched)
    files = "; ".join(f"{r.filename} from {' or '.join(r.urls)}" for r in remotes)
    msg = (
        f"dataset '{dataset}' ({split} split) not found: searched {where}; {reason}. "
        f"Fetch by hand: {files}; put the file(s) in DIR/{folder}/ and pass --data-dir DIR "
        f"(or set {ENV_DATA}=DIR)"
    )
    return AbsnetError(Diagnostic("E603", msg))


def why_not_downloading(download: bool) -> str | None:
    """Return why downloading is off (``download=False`` or ``ABSNET_OFFLINE``), or None."""
    if not download:
        return "downloading is disabled (download=False)"
    if offline():
        return f"downloading is disabled ({ENV_OFFLINE}={os.environ.get(ENV_OFFLINE)})"
    return None


def extract_tar(archive: Path, dest: Path) -> None:
    """Unpack ``archive`` into ``dest`` safely, all or nothing.

    Only regular files and folders with relative paths that stay inside ``dest`` are accepted
    (no absolute paths, ``..``, links or devices). Members are unpacked into a hidden temporary
    folder in ``dest`` and its top-level entries renamed into place at the end.

    Raises:
        AbsnetError: E603 when the archive is unreadable or holds an unsafe member.
        OSError: ``dest`` is not writable (callers may then read the archive in place).
    """
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for m in members:
                p = PurePosixPath(m.name)
                if p.is_absolute() or ".." in p.parts or not (m.isreg() or m.isdir()):
                    raise corrupt_error(archive, f"unsafe archive member {m.name!r} (absolute path, '..' or link)")
            tmp = Path(tempfile.mkdtemp(dir=dest, prefix=f".{archive.name}.extract-"))
            try:
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(tmp, members=members, filter="data")
                else:  # pragma: no cover - Python < 3.11.4; members were checked above
                    tar.extractall(tmp, members=members)
                for entry in tmp.iterdir():
                    target = dest / entry.name
                    if target.exists():
                        shutil.rmtree(target) if target.is_dir() else target.unlink()
                    os.replace(entry, target)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise corrupt_error(archive, f"cannot read the archive ({e or type(e).__name__})") from None
