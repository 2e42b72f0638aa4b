"""absnet.train: certified training and evaluation (``absc train`` / ``absc test`` from Python).

>>> from absnet.train import build_config
>>> cfg = build_config('''network N { input [1, 8, 8] range [0, 1] Flatten() Linear(10) }
... train T { network N data digits epsilon 0.1 goal Box() epochs 1 }''')
>>> cfg.data.name, str(cfg.goal), cfg.epochs
('digits', 'Box()', 1)

``Trainer(cfg, TrainOptions(out="runs")).run_all()`` runs it into a run folder; ``evaluate`` and
``format_table`` give the test report of a network. Names load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TrainConfig": "config", "build_config": "config",
    "Trainer": "loop", "TrainOptions": "loop", "Interrupted": "loop",
    "evaluate": "evaluate", "format_table": "evaluate", "GoalReport": "evaluate",
    "load_checkpoint": "checkpoint", "load_weights": "checkpoint", "save_checkpoint": "checkpoint",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'absnet.train' has no attribute '{name}'")
    return getattr(importlib.import_module(f"absnet.train.{module}"), name)
