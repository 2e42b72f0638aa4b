"""PNG plots of a run's metrics: ``loss.png``, ``accuracy.png``, ``epsilon.png``.

matplotlib is an optional extra (``pip install 'absnet[plots]'``) and is imported only inside
:func:`write_plots`. The figures are drawn with the object-oriented API on an Agg canvas, so the
process-wide pyplot backend of a caller (a notebook, say) is never changed.
"""

from __future__ import annotations

import importlib.util
import io
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from absnet.train.rundir import atomic_write

Series = tuple[list[float], list[float]]


def plots_available() -> bool:
    """Whether matplotlib can be imported (``absnet[plots]``)."""
    return importlib.util.find_spec("matplotlib") is not None


def _value(v: Any) -> float:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else math.nan


def _series(records: Iterable[dict], key: str, scale: float = 1.0) -> Series | None:
    """(x, y) of ``key`` over the records that have it, x the fractional epoch; None when nothing is finite."""
    xs, ys = [], []
    for r in records:
        if key in r:
            x = _value(r.get("time", r.get("epoch")))
            if math.isnan(x):
                x = _value(r.get("epoch"))
            xs.append(x)
            ys.append(_value(r[key]) * scale)
    return (xs, ys) if any(math.isfinite(y) for y in ys) else None


def _goals(records: Iterable[dict]) -> list[str]:
    """Test goal texts in the order they first appear (keys ``test/<goal>/<metric>``)."""
    goals: dict[str, None] = {}
    for r in records:
        for key in r:
            if key.startswith("test/") and key.endswith(("/clean", "/safe")):
                goals.setdefault(key[len("test/"):key.rindex("/")], None)
    return list(goals)


def _plot(path: Path, title: str, ylabel: str, series: dict[str, Series], ylim: tuple[float, float] | None) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o" if len(xs) <= 30 else None, markersize=3, label=label)
    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(True, alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize="small", loc="best")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write(path, buf.getvalue())


def write_plots(records: list[dict], out_dir: str | Path) -> list[Path]:
    """Write loss.png, accuracy.png and epsilon.png into ``out_dir``; return the files written.

    A plot with nothing to show is skipped; without matplotlib nothing is written and the list
    is empty (see :func:`plots_available`).

    >>> import tempfile
    >>> recs = [{"epoch": e, "time": float(e), "kind": "train", "train/loss": 1.0 / e, "train/acc": 0.5,
    ...          "epsilon": 0.1 * e} for e in (1, 2)]
    >>> [p.name for p in write_plots(recs, tempfile.mkdtemp())] if plots_available() else ['loss.png']
    ['loss.png', 'accuracy.png', 'epsilon.png']
    """
    if not plots_available():
        return []
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train = [r for r in records if r.get("kind", "train") == "train"]
    tests = [r for r in records if r.get("kind") == "test"]
    written: list[Path] = []

    def emit(name: str, title: str, ylabel: str, candidates: dict[str, Series | None],
             ylim: tuple[float, float] | None = None) -> None:
        series = {k: v for k, v in candidates.items() if v is not None}
        if series:
            _plot(out / name, title, ylabel, series, ylim)
            written.append(out / name)

    emit("loss.png", "training loss", "loss", {"train loss": _series(train, "train/loss")})
    accuracy: dict[str, Series | None] = {"train accuracy": _series(train, "train/acc", 100.0)}
    seen: list[list[Any]] = []
    for goal in _goals(tests):
        clean = _series(tests, f"test/{goal}/clean", 100.0)
        same = None if clean is None else [v if math.isfinite(v) else None for v in clean[0] + clean[1]]
        if clean is not None and same not in seen:  # every goal usually sees the same clean accuracy: draw it once
            accuracy["test clean accuracy" if not seen else f"clean ({goal})"] = clean
            seen.append(same)
        accuracy[f"{goal}: Pr[Corr&Proved]"] = _series(tests, f"test/{goal}/safe", 100.0)
    emit("accuracy.png", "accuracy (attack / certified for the test goals)", "accuracy (%)", accuracy, (0.0, 100.0))
    emit("epsilon.png", "epsilon schedule", "epsilon", {"epsilon": _series(train, "epsilon")})
    return written
