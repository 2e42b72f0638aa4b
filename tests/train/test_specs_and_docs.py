"""The shipped specs resolve completely, and docs/training.md names every goal and schedule."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from absnet import frontend
from absnet.goals.catalog import GOALS
from absnet.goals.schedules import SCHEDULES
from absnet.train.config import LR_SCHEDULES, OPTIMIZERS, build_config

ROOT = Path(__file__).resolve().parents[2]
SPECS = sorted((ROOT / "specs").glob("*.absnet"))
TRAINING_DOC = ROOT / "docs" / "training.md"


def test_there_are_specs() -> None:
    assert {p.name for p in SPECS} >= {"digits.absnet", "mnist_small.absnet", "diffai_readme.absnet",
                                       "diffai_experiments.absnet", "modern.absnet", "crown_ibp.absnet"}


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_every_spec_checks_and_every_train_block_resolves(path: Path) -> None:
    text = path.read_text()
    diags, sources = frontend.collect_diagnostics(text, str(path))
    assert not diags, "\n".join(d.render(sources) for d in diags)
    names = frontend.list_trains(frontend.parse_source(text, str(path)))
    assert names
    for name in names:
        cfg = build_config(text, name, file=str(path))
        assert cfg.network and cfg.goal is not None and cfg.tests


def test_diffai_experiment_script_has_its_14_runs() -> None:
    path = ROOT / "specs" / "diffai_experiments.absnet"
    assert len(frontend.list_trains(frontend.parse_source(path.read_text(), str(path)))) == 14


def test_training_doc_names_every_goal_schedule_optimizer_and_lr_schedule() -> None:
    text = TRAINING_DOC.read_text()
    names = [*GOALS, *SCHEDULES, *OPTIMIZERS, *LR_SCHEDULES]
    missing = [n for n in names if f"`{n}" not in text]
    assert not missing, f"docs/training.md does not mention: {', '.join(missing)}"


def test_training_doc_absnet_blocks_check() -> None:
    blocks = re.findall(r"```absnet\n(.*?)```", TRAINING_DOC.read_text(), re.S)
    assert blocks
    for block in blocks:
        diags, sources = frontend.collect_diagnostics(block, str(TRAINING_DOC))
        assert not diags, "\n".join(d.render(sources) for d in diags)
