"""Plots: PNGs for loss, accuracy and epsilon, skipped when there is nothing to draw."""

from __future__ import annotations

from pathlib import Path

import pytest

import absnet.train.plots as plots

PNG = b"\x89PNG\r\n\x1a\n"


def records() -> list[dict]:
    out: list[dict] = []
    for epoch in (1, 2, 3):
        out.append({"epoch": epoch, "time": float(epoch), "kind": "train", "train/loss": 1.0 / epoch,
                    "train/acc": 0.3 * epoch, "epsilon": 0.05 * epoch, "lr": 0.01, "epoch_time": 1.0})
        out.append({"epoch": epoch, "time": float(epoch), "kind": "test", "epsilon": 0.15,
                    "test/MI_FGSM(k=20, r=2)/clean": 0.9, "test/MI_FGSM(k=20, r=2)/safe": 0.5 + 0.1 * epoch,
                    "test/HBox()/clean": 0.9, "test/HBox()/safe": None if epoch == 2 else 0.1 * epoch,
                    "test/HBox()/width": 2.0})
    return out


def test_plots_are_written_as_png_files(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    written = plots.write_plots(records(), tmp_path)
    assert [p.name for p in written] == ["loss.png", "accuracy.png", "epsilon.png"]
    for p in written:
        assert p.parent == tmp_path and p.read_bytes().startswith(PNG)
    assert not list(tmp_path.glob(".*.tmp"))


def test_plots_with_nothing_to_show_are_skipped(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    assert plots.write_plots([], tmp_path) == []
    only_tests = [r for r in records() if r["kind"] == "test"]
    assert [p.name for p in plots.write_plots(only_tests, tmp_path / "t")] == ["accuracy.png"]
    assert plots.write_plots([{"epoch": 1, "kind": "train", "train/loss": None}], tmp_path / "n") == []


def test_without_matplotlib_nothing_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plots, "plots_available", lambda: False)
    assert plots.write_plots(records(), tmp_path) == []
    assert list(tmp_path.iterdir()) == []


def test_goals_are_found_in_record_keys() -> None:
    assert plots._goals(records()) == ["MI_FGSM(k=20, r=2)", "HBox()"]
