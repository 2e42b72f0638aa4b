"""The metrics log of a run (``metrics.jsonl``) and its summary (``summary.json``).

One JSON object per line, appended and fsynced record by record, so a crash loses at most the
line being written; that torn last line is ignored when reading and cut off before the next
append. Non-finite floats are written as ``null`` and their keys listed under ``"nonfinite"``, so
every line is strict JSON that any tool can read.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from absnet.diagnostics import AbsnetError, Diagnostic
from absnet.train.rundir import atomic_write, json_default

_NOT_METRICS = ("epoch", "time", "kind", "nonfinite")
_MAX_WORDS = ("acc", "proved", "safe", "clean")  # higher is better
_MIN_WORDS = ("loss", "width", "time")  # lower is better


def _clean(value: Any, key: str, nonfinite: list[str]) -> Any:
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy / torch scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        nonfinite.append(key)
        return None
    if isinstance(value, dict):
        return {k: _clean(v, f"{key}.{k}", nonfinite) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v, f"{key}.{i}", nonfinite) for i, v in enumerate(value)]
    return value


class MetricsLog:
    """``metrics.jsonl``: one record per epoch or evaluation.

    >>> import tempfile
    >>> from pathlib import Path
    >>> log = MetricsLog(Path(tempfile.mkdtemp()) / "metrics.jsonl")
    >>> log.append({"epoch": 1, "kind": "train", "train/loss": float("nan")})
    >>> log.records()
    [{'epoch': 1, 'kind': 'train', 'train/loss': None, 'nonfinite': ['train/loss']}]
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    def append(self, record: dict) -> None:
        """Append one record (a line), flushed and fsynced before returning."""
        nonfinite: list[str] = list(record.get("nonfinite") or [])
        clean = {k: _clean(v, k, nonfinite) for k, v in record.items() if k != "nonfinite"}
        if nonfinite:
            clean["nonfinite"] = nonfinite
        line = json.dumps(clean, allow_nan=False, default=json_default) + "\n"
        self._repair_tail()
        with open(self.path, "ab") as f:
            f.write(line.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())

    def _repair_tail(self) -> None:
        """Make the file end with a newline: a complete last line gets one, a torn one is cut off."""
        try:
            data = self.path.read_bytes() if self.path.stat().st_size else b""
        except FileNotFoundError:
            return
        if not data or data.endswith(b"\n"):
            return
        cut = data.rfind(b"\n") + 1
        try:
            json.loads(data[cut:])
            atomic_write(self.path, data + b"\n")
        except ValueError:
            atomic_write(self.path, data[:cut])

    def _lines(self) -> list[tuple[bytes, dict]]:
        """(raw line, record) for every readable line; a torn or corrupt last line is dropped."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        raw = [(n, ln) for n, ln in enumerate(data.split(b"\n"), start=1) if ln.strip()]
        out: list[tuple[bytes, dict]] = []
        for i, (number, line) in enumerate(raw):
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
            except ValueError as e:  # includes UnicodeDecodeError from a line cut inside a character
                if i == len(raw) - 1:
                    break  # the line a crash interrupted
                raise AbsnetError(Diagnostic(
                    "E605", f"{self.path}:{number} is not a JSON object ({e}): the metrics log is corrupt",
                    help="delete or repair that line (every line is one JSON object), or start a new run",
                )) from None
            out.append((line, record))
        return out

    def records(self) -> list[dict]:
        """All complete records, in the order they were written."""
        return [r for _, r in self._lines()]

    def truncate_after(self, epoch: int) -> None:
        """Drop records whose ``epoch`` is after ``epoch`` (and a torn last line); rewrite atomically.

        Used on ``--resume``: records written after the checkpoint being resumed from would
        otherwise appear twice.
        """
        if not self.path.exists():
            return
        lines = self._lines()
        keep = [line for line, r in lines
                if not (isinstance(r.get("epoch"), int | float) and r["epoch"] > epoch)]
        data = b"".join(line + b"\n" for line in keep)
        if data != self.path.read_bytes():
            atomic_write(self.path, data)


def _direction(key: str) -> str | None:
    """'max', 'min' or None for a metric key, judged by its last path component."""
    leaf = key.rsplit("/", 1)[-1].lower()
    if any(w in leaf for w in _MAX_WORDS):
        return "max"
    if any(w in leaf for w in _MIN_WORDS):
        return "min"
    return None


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def summarize(records: list[dict]) -> dict:
    """The content of ``summary.json``: per metric its final value and, where "better" is defined, its best.

    Best is the maximum for keys whose last component contains acc/proved/safe/clean, the minimum
    for loss/width/time; other keys (lr, epsilon) get only a final value. Non-finite values (null)
    count as final values but never as best.

    >>> s = summarize([{"epoch": 1, "kind": "train", "train/loss": 0.5, "epoch_time": 2.0},
    ...                {"epoch": 2, "kind": "train", "train/loss": 0.7, "epoch_time": 3.0}])
    >>> s["epochs"], s["train_time"], s["metrics"]["train/loss"]
    (2, 5.0, {'final': 0.7, 'best': 0.5, 'best_epoch': 1, 'better': 'min'})
    """
    metrics: dict[str, dict[str, Any]] = {}
    epochs, train_time = 0, 0.0
    for r in records:
        epoch = r.get("epoch")
        if r.get("kind", "train") == "train":
            if _number(epoch):
                epochs = max(epochs, int(epoch))
            if _number(r.get("epoch_time")):
                train_time += float(r["epoch_time"])
        for key, value in r.items():
            if key in _NOT_METRICS or not (value is None or _number(value)):
                continue
            m = metrics.setdefault(key, {"final": None})
            m["final"] = value
            better = _direction(key)
            if better is None or value is None or (isinstance(value, float) and not math.isfinite(value)):
                continue
            if "best" not in m or (value > m["best"] if better == "max" else value < m["best"]):
                m.update(best=value, best_epoch=epoch, better=better)
    return {"epochs": epochs, "train_time": train_time, "records": len(records),
            "metrics": dict(sorted(metrics.items()))}
