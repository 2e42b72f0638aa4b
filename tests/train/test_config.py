"""Resolving train blocks: typed settings, defaults, --set overrides, every problem at once."""

from __future__ import annotations

import math

import pytest

from absnet.diagnostics import AbsnetError
from absnet.frontend import collect_diagnostics
from absnet.train.config import LRSchedule, build_config

NET = "network N { input [1, 8, 8] range [0, 1] Flatten() Linear(10) }\n"


def spec(*lines: str) -> str:
    body = "\n".join(f"  {ln}" for ln in lines)
    return NET + "train T {\n  network N\n" + body + "\n}\n"


BASE = ("data digits(batch=16)", "epsilon 0.1", "goal Box()")


def test_defaults_are_documented_values() -> None:
    cfg = build_config(spec(*BASE))
    assert cfg.data.batch == 16 and cfg.data.test_batch == 256 and cfg.data.augment == "none"
    assert str(cfg.optimizer) == "Adam(lr=0.001, betas=[0.9, 0.999], weight_decay=0, eps=1e-08)"
    assert cfg.epochs == 10 and cfg.seed == 1 and cfg.test_every == 1 and cfg.grad_clip is None
    assert cfg.test_epsilon == 0.1
    assert [str(t) for t in cfg.tests] == ["MI_FGSM(k=20, r=2)", "HBox()"]


def test_test_epsilon_defaults_to_the_largest_scheduled_width() -> None:
    cfg = build_config(spec("data digits", "epsilon Lin(0, 0.3, 10, 2)", "goal Box()"))
    assert cfg.test_epsilon == pytest.approx(0.3)
    assert cfg.epsilon.value(7.0) == pytest.approx(0.15)


def test_cifar_augments_by_default_and_options_bind() -> None:
    net = "network C { input [3, 32, 32] range [0, 1] Flatten() Linear(10) }\n"
    cfg = build_config(net + "train T { network C data cifar10(batch=8, train_size=100) epsilon 0.01 goal Box()\n"
                       "optimizer SGD(lr=0.1, nesterov=true, weight_decay=0.0005) grad_clip 1.0 test_every 0 }")
    assert cfg.data.augment == "crop_flip" and cfg.data.train_size == 100
    assert cfg.optimizer.name == "SGD" and cfg.optimizer.args["nesterov"] is True
    assert cfg.grad_clip == 1.0 and cfg.test_every == 0


def test_overrides_replace_and_amend_settings() -> None:
    cfg = build_config(spec(*BASE), overrides=["epochs=3", "data.batch=4", "goal=Mix(a=Point(), b=HBox(), bw=0.2)",
                                               "test=PGD(k=3), Box()"])
    assert cfg.epochs == 3 and cfg.data.batch == 4
    assert str(cfg.goal).startswith("Mix(") and [str(t) for t in cfg.tests] == ["PGD(k=3)", "Box()"]
    assert cfg.overrides == ("epochs=3", "data.batch=4", "goal=Mix(a=Point(), b=HBox(), bw=0.2)",
                             "test=PGD(k=3), Box()")


def test_bad_override_names_the_setting() -> None:
    with pytest.raises(AbsnetError, match="unknown train setting 'epoch'") as e:
        build_config(spec(*BASE), overrides=["epoch=3"])
    assert "epochs" in str(e.value)
    with pytest.raises(AbsnetError, match="batch"):
        build_config(spec(*BASE), overrides=["data.batch=zero"])


def test_every_problem_is_reported_at_once_with_spans() -> None:
    text = spec("data digitz(batch=0)", "epsilon Lin(0, 0.1)", "goal Boxx()", "optimizer Adamm(lr=1)",
                "lr_schedule MultiStep(milestones=[5, 2])", "grad_clip -1")
    with pytest.raises(AbsnetError) as e:
        build_config(text, file="t.absnet")
    msg = str(e.value)
    for needle in ("unknown dataset 'digitz'", "Lin is missing its required argument 'steps'",
                   "unknown goal 'Boxx'", "unknown optimizer 'Adamm'", "milestones must be increasing",
                   "grad_clip"):
        assert needle in msg, needle
    assert "t.absnet:" in msg


def test_absc_check_reports_goal_errors_in_train_blocks() -> None:
    diags, _ = collect_diagnostics(spec("data digits", "epsilon 0.1", "goal Box(widht=0.1)"), "s.absnet")
    assert [d.code for d in diags] == ["E202"] and "widht" in diags[0].message


def test_missing_data_epsilon_and_goal_are_errors() -> None:
    with pytest.raises(AbsnetError) as e:
        build_config(spec())
    msg = str(e.value)
    assert "train T does not give its data, epsilon and goal" in msg


def test_lr_schedules_step_per_epoch() -> None:
    ms = LRSchedule("MultiStep", {"milestones": (2, 4), "gamma": 0.1})
    assert [ms.lr(1.0, e, 6) for e in range(6)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    st = LRSchedule("Step", {"step": 2, "gamma": 0.5, "start": 1})
    assert [st.lr(1.0, e, 6) for e in range(6)] == pytest.approx([1, 1, 1, 0.5, 0.5, 0.25])
    cos = LRSchedule("Cosine", {"min_lr": 0.0})
    assert cos.lr(1.0, 0, 4) == 1.0 and cos.lr(1.0, 2, 4) == pytest.approx(0.5) and math.isclose(cos.lr(1.0, 4, 4), 0,
                                                                                                abs_tol=1e-12)
