"""The training loop's pieces: the reduce-on-plateau schedule, the allocator tuning."""

from __future__ import annotations

import math

import pytest
import torch

from distilrubert.trainer import TrainOptions, make_scheduler


def _options(**kw) -> TrainOptions:
    return TrainOptions(corpus=["x"], output="unused", max_steps=100, lr=1e-3, warmup=0.1, schedule="plateau", **kw)


def _scheduler(**kw):
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=1e-3)
    return optimizer, make_scheduler(_options(**kw), optimizer)


def test_plateau_schedule_warms_up_then_halves_after_patience():
    optimizer, scheduler = _scheduler(plateau_patience=2)
    lrs = []
    for _ in range(10):  # warm-up: 10 steps
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(1e-4) and lrs[-1] == pytest.approx(1e-3)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)
    # 5.0 and 4.0 improve; 4.0 and 6.0 are 2 bad validations (= patience, no cut yet); a third cuts.
    assert [scheduler.observe(v) for v in (5.0, 4.0, 4.0, 6.0)] == [False, False, False, False]
    assert scheduler.observe(4.0) is True
    assert optimizer.param_groups[0]["lr"] == pytest.approx(5e-4)
    assert scheduler.get_last_lr()[0] == pytest.approx(5e-4)
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(5e-4)  # the cut stays through later steps
    assert scheduler.observe(3.0) is False and scheduler.best == 3.0
    assert scheduler.observe(math.nan) is False  # a failed validation is not a plateau


def test_plateau_schedule_state_round_trips():
    optimizer, scheduler = _scheduler(plateau_patience=0, plateau_factor=0.25)
    for _ in range(12):
        optimizer.step()
        scheduler.step()
    scheduler.observe(2.0)
    assert scheduler.observe(2.5) is True
    state = scheduler.state_dict()
    torch.save(state, "/dev/null")  # picklable (accelerate saves it with torch.save)
    optimizer2, fresh = _scheduler(plateau_patience=0, plateau_factor=0.25)
    fresh.load_state_dict(state)
    assert (fresh.scale, fresh.best, fresh.bad) == (0.25, 2.0, 0)
    optimizer2.step()
    fresh.step()
    assert optimizer2.param_groups[0]["lr"] == pytest.approx(2.5e-4)


def test_plateau_schedule_needs_validation():
    with pytest.raises(ValueError, match="--schedule plateau"):
        _options(eval_every=0)
    with pytest.raises(ValueError, match="--plateau-factor"):
        _options(plateau_factor=1.5)


def test_tune_malloc_applies_on_linux_glibc_and_can_be_disabled(monkeypatch):
    import sys

    from distilrubert.trainer import tune_malloc

    monkeypatch.setenv("DISTILRUBERT_NO_MALLOPT", "1")
    assert tune_malloc() is False
    monkeypatch.delenv("DISTILRUBERT_NO_MALLOPT")
    if sys.platform.startswith("linux"):
        import platform

        if platform.libc_ver()[0] == "glibc":
            assert tune_malloc() is True
