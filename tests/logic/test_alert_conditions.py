"""Alert conditions: thresholds crossed, plateaus reached, and arguments that cannot work."""
from __future__ import annotations

import pytest

from fastwatch.record.alerts import Condition, lower_is_better, notify_urls, parse_alert_on


def test_a_threshold_alerts_when_it_is_newly_crossed():
    condition = Condition.parse('error_rate', '<0.1')
    assert [bool(condition.check(v)) for v in (0.3, 0.05, 0.04, 0.2, 0.09)] == [False, True, False, False, True]
    assert condition.trigger == 'threshold'


def test_a_plateau_alerts_after_n_epochs_without_improvement_and_again_after_n_more():
    condition = Condition.parse('valid_loss', 'no improvement for 2 epochs')
    found = [condition.check(v) for v in (1.0, 0.9, 0.95, 0.92, 0.91, 0.93)]
    assert [bool(f) for f in found] == [False, False, False, True, False, True]
    assert 'has not improved for 2 epochs (best 0.9' in found[3] and condition.trigger == 'plateau'
    accuracy = Condition.parse('accuracy', 'no improvement for 1 epoch')
    assert not accuracy.check(0.5) and not accuracy.check(0.6) and accuracy.check(0.55)  # higher is better


@pytest.mark.parametrize('alert_on, message', [
    ({'error_rate': 'below 0.05'}, "takes a threshold"), ({'valid_loss': 'no improvement for 0 epochs'}, 'at least 1'),
    (['error_rate'], 'must be a dict'), ({'x': 3}, 'takes a threshold'),
])
def test_conditions_that_cannot_work_are_one_clear_error(alert_on, message):
    with pytest.raises(ValueError, match=message): parse_alert_on(alert_on)


def test_notification_urls_and_which_metrics_go_down():
    assert notify_urls('ntfy://a, json://b  mailto://c') == ['ntfy://a', 'json://b', 'mailto://c']
    assert notify_urls(None) == [] and notify_urls(['x://1']) == ['x://1']
    assert lower_is_better('valid_loss') and lower_is_better('error_rate') and not lower_is_better('accuracy')
