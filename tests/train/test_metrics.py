"""metrics.jsonl: strict JSON lines, torn-line tolerance, truncation on resume, and the summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from absnet.diagnostics import AbsnetError
from absnet.train.metrics import MetricsLog, summarize


def strict_lines(path: Path) -> list[dict]:
    def refuse(token: str) -> None:
        raise AssertionError(f"non-standard JSON token {token}")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def test_records_are_appended_as_strict_json_with_nonfinite_values_listed(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path / "metrics.jsonl")
    assert log.records() == []
    log.append({"epoch": 1, "kind": "train", "train/loss": 0.25, "epsilon": 0.1})
    log.append({"epoch": 2, "kind": "train", "train/loss": float("nan"), "test/Box()/width": float("inf")})
    assert strict_lines(log.path) == log.records()
    assert log.records()[1] == {"epoch": 2, "kind": "train", "train/loss": None, "test/Box()/width": None,
                                "nonfinite": ["train/loss", "test/Box()/width"]}


def test_a_torn_last_line_is_ignored_and_cut_before_the_next_append(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.append({"epoch": 1, "train/loss": 0.5})
    with open(log.path, "ab") as f:
        f.write(b'{"epoch": 2, "train/lo')
    assert log.records() == [{"epoch": 1, "train/loss": 0.5}]
    log.append({"epoch": 2, "train/loss": 0.4})
    assert strict_lines(log.path) == [{"epoch": 1, "train/loss": 0.5}, {"epoch": 2, "train/loss": 0.4}]


def test_a_line_cut_inside_a_character_or_just_before_its_newline(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.append({"epoch": 1})
    with open(log.path, "ab") as f:
        f.write('{"goal": "ε'.encode()[:-1])  # half of a UTF-8 character
    assert log.records() == [{"epoch": 1}]
    log.path.write_bytes(b'{"epoch": 1}\n{"epoch": 2}')  # complete, only the newline is missing
    assert log.records() == [{"epoch": 1}, {"epoch": 2}]
    log.append({"epoch": 3})
    assert [r["epoch"] for r in strict_lines(log.path)] == [1, 2, 3]


def test_a_corrupt_line_before_the_last_is_an_error_naming_it(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.path.write_text('{"epoch": 1}\nnot json\n{"epoch": 3}\n')
    with pytest.raises(AbsnetError) as e:
        log.records()
    (diag,) = e.value.diagnostics
    assert diag.code == "E605" and f"{log.path}:2 " in diag.message and "\n" not in diag.message


def test_truncate_after_drops_later_epochs_and_a_torn_line(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.truncate_after(0)  # a new run: no file yet, nothing to do
    assert not log.path.exists()
    for epoch in (1, 2, 3):
        log.append({"epoch": epoch, "kind": "train"})
        log.append({"epoch": epoch, "kind": "test"})
    log.append({"note": "no epoch"})
    with open(log.path, "ab") as f:
        f.write(b'{"epoch": 4, "ki')
    log.truncate_after(2)
    assert strict_lines(log.path) == [{"epoch": 1, "kind": "train"}, {"epoch": 1, "kind": "test"},
                                      {"epoch": 2, "kind": "train"}, {"epoch": 2, "kind": "test"},
                                      {"note": "no epoch"}]
    assert not list(tmp_path.glob(".*.tmp"))


def test_summarize_reports_final_and_best_values() -> None:
    goal = "test/HBox()"
    records = [
        {"epoch": 1, "time": 1.0, "kind": "train", "train/loss": 0.9, "train/acc": 0.5, "epsilon": 0.05,
         "lr": 0.1, "epoch_time": 2.0},
        {"epoch": 1, "time": 1.0, "kind": "test", "epsilon": 0.1, f"{goal}/clean": 0.8, f"{goal}/safe": 0.3,
         f"{goal}/proved": 0.35, f"{goal}/corr_given_proved": 0.9, f"{goal}/width": 4.0, f"{goal}/time": 1.5},
        {"epoch": 2, "time": 2.0, "kind": "train", "train/loss": 0.4, "train/acc": 0.7, "epsilon": 0.1,
         "lr": 0.01, "epoch_time": 3.0},
        {"epoch": 2, "time": 2.0, "kind": "test", "epsilon": 0.1, f"{goal}/clean": 0.85, f"{goal}/safe": 0.2,
         f"{goal}/proved": 0.25, f"{goal}/corr_given_proved": 0.8, f"{goal}/width": 3.0, f"{goal}/time": 2.5},
        {"epoch": 3, "time": 3.0, "kind": "train", "train/loss": None, "train/acc": 0.6, "epsilon": 0.1,
         "lr": 0.001, "epoch_time": 1.0, "nonfinite": ["train/loss"]},
    ]
    s = summarize(records)
    assert s["epochs"] == 3 and s["train_time"] == 6.0 and s["records"] == 5
    m = s["metrics"]
    assert m["train/loss"] == {"final": None, "best": 0.4, "best_epoch": 2, "better": "min"}
    assert m["train/acc"] == {"final": 0.6, "best": 0.7, "best_epoch": 2, "better": "max"}
    assert m[f"{goal}/safe"]["best"] == 0.3 and m[f"{goal}/safe"]["final"] == 0.2
    assert m[f"{goal}/clean"]["best"] == 0.85 and m[f"{goal}/corr_given_proved"]["best"] == 0.9
    assert m[f"{goal}/width"]["best"] == 3.0 and m[f"{goal}/time"]["best_epoch"] == 1
    assert m["lr"] == {"final": 0.001} and m["epsilon"] == {"final": 0.1}
    assert not {"epoch", "time", "kind", "nonfinite"} & m.keys()
    json.dumps(s, allow_nan=False)
    assert summarize([]) == {"epochs": 0, "train_time": 0.0, "records": 0, "metrics": {}}
