"""The run folder of ``absc train``: where a run's spec, settings, environment, metrics and checkpoints live.

Layout (DESIGN.md §6)::

    runs/<train>-<YYYYmmdd-HHMMSS>[-N]/
        spec.absnet  imports/...  resolved.json  env.json  metrics.jsonl  summary.json
        checkpoints/last.safetensors (+ .json)  checkpoints/best.safetensors (+ .json)  *.png

Every file is written atomically (a temporary file in the same folder, fsynced, then renamed), so
a crash leaves the old or the new version of a file, never half of one.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import re
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from absnet.diagnostics import AbsnetError, Diagnostic


def atomic_write(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Replace ``path`` with ``data`` atomically: a fsynced temporary file renamed over it."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def json_default(obj: Any) -> Any:
    """Encode the few non-JSON values runs produce: paths, numpy/torch scalars and arrays, sets."""
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, set | frozenset):
        return sorted(obj, key=str)
    if hasattr(obj, "tolist"):  # numpy arrays and scalars, torch tensors
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _error(message: str, help: str) -> AbsnetError:
    return AbsnetError(Diagnostic("E605", message, help=help))


@dataclass
class RunDir:
    """One run folder.

    >>> import tempfile
    >>> run = create_run_dir(tempfile.mkdtemp(), "T")
    >>> run.write_json("resolved.json", {"epochs": 2})
    >>> run.read_json("resolved.json")
    {'epochs': 2}
    >>> run.checkpoints.is_dir()
    True
    """

    path: Path

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def write_json(self, name: str, obj: Any, *, sort_keys: bool = True) -> None:
        """Write ``obj`` as indented JSON to ``path/name`` atomically (non-finite floats as NaN/Infinity)."""
        text = json.dumps(obj, indent=2, sort_keys=sort_keys, default=json_default, allow_nan=True) + "\n"
        atomic_write(self.path / name, text)

    def read_json(self, name: str) -> dict:
        """Read ``path/name``; E605 naming the file when it is missing or not valid JSON."""
        file = self.path / name
        try:
            return json.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise _error(f"{file} is missing from the run folder {self.path}",
                         help="pass the folder absc train created, or start a new run") from None
        except (UnicodeDecodeError, ValueError) as e:
            raise _error(f"{file} is not valid JSON ({e}): the file is truncated or was edited",
                         help="restore it from a copy, or start a new run") from None


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "run"


def create_run_dir(root: str | os.PathLike[str], name: str, *, now: _dt.datetime | None = None) -> RunDir:
    """Create ``root/<name>-<YYYYmmdd-HHMMSS>[-N]`` and its ``checkpoints/``; never reuses a folder.

    Args:
        root: the folder that holds runs (created if needed).
        name: the train block's name (characters unsafe in file names become ``_``).
        now: the time stamp to use (default: the local time now).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    stamp = (now or _dt.datetime.now()).strftime("%Y%m%d-%H%M%S")
    base = f"{_safe_name(name)}-{stamp}"
    n = 1
    while True:
        path = root / (base if n == 1 else f"{base}-{n}")
        try:
            path.mkdir()  # exclusive: fails when another run (or process) has the name
            break
        except FileExistsError:
            n += 1
    run = RunDir(path)
    run.checkpoints.mkdir()
    return run


def open_run_dir(path: str | os.PathLike[str]) -> RunDir:
    """Open an existing run folder for ``--resume``; E605 when it is not one."""
    p = Path(path)
    example = "pass the folder absc train printed when the run started, e.g. --resume runs/<train>-<date>"
    if not p.exists():
        raise _error(f"cannot resume {p}: there is no such folder", help=example)
    if not p.is_dir():
        run = next((q for q in p.parents if (q / "resolved.json").is_file()), None)
        raise _error(f"cannot resume {p}: it is a file, and --resume takes the run folder",
                     help=f"pass --resume {run}" if run else example)
    if not (p / "resolved.json").is_file():
        run = next((q for q in p.parents if (q / "resolved.json").is_file()), None)
        raise _error(f"cannot resume {p}: it is not an absc train run folder (it has no resolved.json)",
                     help=f"pass --resume {run}" if run else example)
    return RunDir(p)


def environment() -> dict[str, Any]:
    """What the run ran on: versions, devices, threads, host, command line and start time (env.json)."""
    import numpy
    import torch

    import absnet

    cuda = torch.cuda.is_available()
    env: dict[str, Any] = {
        "absnet": absnet.__version__,
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "cuda_available": cuda,
        "cuda_version": torch.version.cuda,
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "mps_available": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "hostname": socket.gethostname(),
        "argv": list(sys.argv),
        "cwd": os.getcwd(),
        "start_time": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    for name in ("safetensors", "onnx", "onnxruntime", "lark"):
        module = sys.modules.get(name)
        if module is not None:
            env[name] = getattr(module, "__version__", None)
    return env


def _copy_path(file: str) -> Path:
    """Where an imported file's copy goes under ``imports/``: its path relative to here, never escaping."""
    p = os.path.normpath(file)
    if os.path.isabs(p):
        rel = os.path.relpath(p)
        p = rel if not rel.startswith("..") else os.path.splitdrive(p)[1].lstrip("/\\")
    parts = [("_up" if part == ".." else _safe_name(part) if part.startswith("<") else part)
             for part in Path(p).parts if part not in ("", ".")]
    return Path(*parts) if parts else Path("_")


def write_spec_copy(run: RunDir, text: str, imports: dict[str, str]) -> None:
    """Copy the spec (``spec.absnet``) and the files it imports (``imports/<path>``) into the run folder.

    ``imports`` maps each imported file's path (as the front end read it) to its text;
    ``imports/index.json`` records where each copy came from.
    """
    atomic_write(run.path / "spec.absnet", text)
    if not imports:
        return
    index: dict[str, str] = {}
    for file, body in imports.items():
        dest = run.path / "imports" / _copy_path(file)
        if dest.as_posix() in {(run.path / v).as_posix() for v in index.values()}:
            dest = dest.with_name(f"{dest.stem}-{len(index)}{dest.suffix}")  # two files flattened to one name
        dest.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(dest, body)
        index[file] = dest.relative_to(run.path).as_posix()
    run.write_json("imports/index.json", index)

