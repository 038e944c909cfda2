"""HackingMonitor on hand-made score streams: the reference quantiles, the window, the alarm step and its actions."""

import pytest
import torch
from transformers import TrainerControl

from trl_robust.monitor import HackingMonitor, monitor_metrics, nominal_minus_worst


def scores_with_epistemic(values, gap_first: bool = False):
    """K = 2 members with means (0, 2e): the population std of the two means is exactly e. The first member is the
    confident one (nominal = 0 = worst, gap 0) unless `gap_first` makes the second one confident (gap 2e)."""
    e = torch.as_tensor(values, dtype=torch.float32)
    means = torch.stack([torch.zeros_like(e), 2 * e], -1)
    stds = torch.tensor([[0.5, 0.1]] if gap_first else [[0.1, 0.5]]).expand(len(e), 2)
    return means, stds


def test_reference_quantile_by_hand():
    monitor = HackingMonitor(torch.arange(1.0, 101.0), quantile=0.95)
    threshold, mean = monitor.reference["epistemic"]
    assert threshold == pytest.approx(95.05)  # linear interpolation at position 0.95 * 99 = 94.05
    assert mean == pytest.approx(50.5)
    # the fewest of 64 samples that in-distribution answers (5% out each) reach with P <= 1e-3: P(X >= 11) = 3.1e-4,
    # P(X >= 10) = 1.2e-3
    assert monitor.alarm_count == 11
    assert HackingMonitor([0.0, 1.0], window=16).alarm_count == 5  # P(X >= 5) = 8.6e-4, P(X >= 4) = 7.0e-3
    assert HackingMonitor([0.0, 1.0], window=10, alarm_fraction=0.25).alarm_count == 3  # more than 2.5 of 10


def test_gap_is_nominal_minus_worst():
    means, stds = torch.tensor([[1.0, 3.0, 2.0]]), torch.tensor([[0.3, 0.1, 0.2]])
    assert nominal_minus_worst(means, stds).item() == pytest.approx(2.0)  # member 1 is confident: 3 - 1


def test_in_distribution_stream_never_alarms():
    torch.manual_seed(0)
    reference = torch.rand(2000)
    monitor = HackingMonitor(reference, window=64, patience=2)
    fractions = []
    for step in range(1, 201):
        metrics = monitor.observe(*scores_with_epistemic(torch.rand(8)), step)
        fractions.append(metrics["monitor/frac_out"])
        assert metrics["monitor/alarm"] == 0.0
    assert monitor.first_alarm_step is None
    assert sum(fractions[10:]) / len(fractions[10:]) == pytest.approx(0.05, abs=0.02)


def test_alarm_step_by_hand_and_metrics():
    monitor = HackingMonitor(torch.arange(1.0, 101.0) / 100, quantile=0.95, window=16, patience=2)
    assert monitor.alarm_count == 5
    inside, outside = [0.1] * 8, [2.0] * 8
    logs = [monitor.observe(*scores_with_epistemic(inside), step) for step in range(1, 6)]
    assert all(log["monitor/frac_out"] == 0.0 and log["monitor/alarm"] == 0.0 for log in logs)
    step6 = monitor.observe(*scores_with_epistemic(outside), 6)
    assert step6["monitor/frac_out"] == 0.5 and step6["monitor/alarm"] == 0.0  # above once: patience not met
    step7 = monitor.observe(*scores_with_epistemic(outside), 7)
    assert step7["monitor/frac_out"] == 1.0 and step7["monitor/alarm"] == 1.0 and monitor.first_alarm_step == 7
    assert step7["monitor/epistemic"] == pytest.approx(2.0)
    assert step7["monitor/epistemic_ratio"] == pytest.approx(2.0 / 0.505)
    assert "monitor/gap" not in step7  # no reference gap given
    # the alarm stays raised and its step does not move
    later = monitor.observe(*scores_with_epistemic(inside), 8)
    assert later["monitor/alarm"] == 1.0 and monitor.first_alarm_step == 7


def test_no_alarm_before_the_window_is_full():
    monitor = HackingMonitor(torch.arange(1.0, 101.0) / 100, window=32, patience=1)
    assert monitor.observe(*scores_with_epistemic([2.0] * 8), 1)["monitor/alarm"] == 0.0  # 8 of 32
    for step in (2, 3):
        monitor.observe(*scores_with_epistemic([2.0] * 8), step)
    assert monitor.observe(*scores_with_epistemic([2.0] * 8), 4)["monitor/alarm"] == 1.0
    assert monitor.first_alarm_step == 4


def test_gap_reference_is_tracked():
    monitor = HackingMonitor([0.0, 1.0], reference_gap=[0.0, 0.0, 0.1], window=4)
    metrics = monitor.observe(*scores_with_epistemic([0.5, 0.5], gap_first=True), 1)
    assert metrics["monitor/gap"] == pytest.approx(1.0)  # 2e with e = 0.5
    assert metrics["monitor/gap_frac_out"] == 1.0


@pytest.mark.parametrize("action, flag", [("save", "should_save"), ("stop", "should_training_stop")])
def test_actions_fire_once_at_the_alarm(action, flag):
    monitor = HackingMonitor(torch.arange(1.0, 101.0) / 100, window=8, patience=1, action=action)  # alarm: 4 of 8
    control = TrainerControl()
    monitor.observe(*scores_with_epistemic([0.1] * 8), 1)
    assert not getattr(monitor.on_step_end(None, None, control), flag)
    monitor.observe(*scores_with_epistemic([2.0] * 8), 2)
    assert getattr(monitor.on_step_end(None, None, control), flag)
    control = TrainerControl()
    monitor.observe(*scores_with_epistemic([2.0] * 8), 3)
    assert not getattr(monitor.on_step_end(None, None, control), flag)  # once, not every step after


def test_log_action_changes_nothing_and_helper_collects_monitors():
    monitor = HackingMonitor(torch.arange(1.0, 101.0) / 100, window=8, patience=1)
    control = TrainerControl()
    metrics = monitor_metrics([object(), monitor], *scores_with_epistemic([2.0] * 8), 1)
    assert metrics["monitor/alarm"] == 1.0
    monitor.on_step_end(None, None, control)
    assert not control.should_save and not control.should_training_stop


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(quantile=1.0), "quantile must be in"),
        (dict(alarm_fraction=0.0), "alarm_fraction must be in"),
        (dict(false_alarm_rate=1.5), "false_alarm_rate must be in"),
        (dict(window=0), "window and patience"),
        (dict(action="email"), "action must be one of log, warn, save, stop"),
        (dict(reference_epistemic=[1.0]), "at least 2 finite values"),
        (dict(reference_epistemic=[1.0, float("nan")]), "at least 2 finite values"),
    ],
)
def test_bad_settings_are_refused(kwargs, match):
    kwargs = {"reference_epistemic": [0.0, 1.0], **kwargs}
    with pytest.raises(ValueError, match=match):
        HackingMonitor(**kwargs)


def test_distinct_bigram_ratio_by_hand():
    from trl_robust.monitor import distinct_bigram_ratio, masked_token_lists

    # [1 2 3 4]: 3 bigrams, all distinct; [7 7 7 7 7]: 4 bigrams, one distinct; [5 6 5 6 5]: (5,6) (6,5) twice each
    ratios = distinct_bigram_ratio([[1, 2, 3, 4], [7, 7, 7, 7, 7], [5, 6, 5, 6, 5], [9, 9]])
    assert ratios.tolist() == pytest.approx([1.0, 0.25, 0.5, 1.0])  # 2 tokens: no bigram can repeat
    ids, mask = torch.tensor([[1, 2, 0], [3, 3, 3]]), torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert masked_token_lists(ids, mask) == [[1, 2], [3, 3, 3]]


def test_repetition_alarm_against_the_first_window():
    """The first full window (2 updates of 4 answers) is the reference, 1.0. Answers at 0.9 (a drop of 10%) stay above
    the line 1 - repetition_drop = 0.8; answers at 0.5 take the window's mean to 0.7, then 0.5, and the alarm comes on
    the second update in a row under the line (`patience` 2)."""
    monitor = HackingMonitor([0.0, 1.0], window=8, patience=2, repetition_drop=0.2)
    inside = scores_with_epistemic([0.1] * 4)  # epistemic never out: only repetition can alarm
    first = monitor.observe(*inside, 1, distinct=torch.ones(4))
    assert first["monitor/distinct_2"] == 1.0 and "monitor/distinct_2_ratio" not in first  # window not full yet
    assert monitor.observe(*inside, 2, distinct=torch.ones(4))["monitor/distinct_2_ratio"] == 1.0
    assert monitor.distinct_reference == 1.0
    for step in (3, 4, 5):
        assert monitor.observe(*inside, step, distinct=torch.full((4,), 0.9))["monitor/alarm"] == 0.0
    drop = monitor.observe(*inside, 6, distinct=torch.full((4,), 0.5))  # window: 4 x 0.9, 4 x 0.5 -> 0.7
    assert drop["monitor/distinct_2_ratio"] == pytest.approx(0.7) and drop["monitor/alarm"] == 0.0  # 1 of 2 updates
    alarm = monitor.observe(*inside, 7, distinct=torch.full((4,), 0.5))
    assert alarm["monitor/alarm"] == 1.0 and monitor.first_alarm_step == 7 and monitor.alarm_reason == "repetition"

    off = HackingMonitor([0.0, 1.0], window=4, patience=1, repetition_drop=None)
    off.observe(*inside, 1, distinct=torch.ones(4))
    assert off.observe(*inside, 2, distinct=torch.zeros(4))["monitor/alarm"] == 0.0  # the signal is off
    # without the answers' tokens the repetition metrics are absent, the rest as before
    assert "monitor/distinct_2" not in HackingMonitor([0.0, 1.0]).observe(*inside, 1)
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="repetition_drop must be in"):
            HackingMonitor([0.0, 1.0], repetition_drop=bad)
