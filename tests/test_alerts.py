"""Alerts through apprise to a local JSON receiver (`json://127.0.0.1:PORT`): one per trigger, with the run's link,
kept in the run's alerts table and shown on the dashboard."""
from __future__ import annotations

import html
import warnings

import pytest
from fastai.callback.core import Callback
from helpers import wait_for
from storage_server import Receiver
from torch import nn

from fastwatch import WatchCallback, open_store
from fastwatch.demo.digits import digits_learner
from fastwatch.errors import StoreError
from fastwatch.view.dashboard import Dashboard


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.shutdown()


def learner(dls, path, extra_cbs=(), **kwargs):
    "The small CNN with a `WatchCallback` recording into `path`."
    return digits_learner(dls, cbs=[WatchCallback(store=path, name='alerting', **kwargs), *extra_cbs])


def train(learn, epochs: int, lr: float):
    with learn.no_bar(), learn.no_logging(): learn.fit(epochs, lr=lr)


def fit(dls, path, epochs: int, lr: float, **kwargs):
    """`fit` the small CNN with a `WatchCallback`; returns the learner. At lr=0 nothing in the model moves, not even
    BatchNorm's running statistics, so every epoch's metrics repeat exactly."""
    learn = learner(dls, path, **kwargs)
    if lr == 0:
        for module in learn.model.modules():
            if isinstance(module, nn.BatchNorm2d): module.momentum = 0
    train(learn, epochs, lr)
    return learn


def triggers(store, run_id) -> list[str]: return [a.trigger for a in store.alerts(run_id)]


def test_each_trigger_alerts_once_with_the_runs_link(dls, tmp_path, receiver):
    "lr=0: the metrics stay as they are, so error_rate meets its threshold at once and valid_loss never improves."
    learn = fit(dls, tmp_path / 'store.db', epochs=4, lr=0, alerts=receiver.url,
                alert_on={'error_rate': '<1.01', 'valid_loss': 'no improvement for 2 epochs'})
    run_id, store = learn.watch.run_id, open_store(tmp_path / 'store.db', readonly=True)
    wait_for(lambda: 'finished' in triggers(store, run_id))  # sent from a thread of their own, then written
    assert triggers(store, run_id) == ['threshold', 'plateau', 'finished']  # once each, though both hold again later
    bodies = [r['message'] for r in receiver.received]
    assert bodies == [a.message for a in store.alerts(run_id)] and all(a.delivered for a in store.alerts(run_id))
    assert all(f'alerting ({run_id})' in b and f'http://127.0.0.1:8866/?run={run_id}' in b for b in bodies)
    assert 'error_rate is' in bodies[0] and 'after epoch 0' in bodies[0]
    assert 'valid_loss has not improved for 2 epochs' in bodies[1] and 'after epoch 2' in bodies[1]
    final = store.epochs(run_id)[-1]
    assert 'finished after 4 epochs' in bodies[2] and f"error_rate {final.metrics['error_rate']:.4g}" in bodies[2]
    assert [r['title'] for r in receiver.received][2] == f'fastwatch: run alerting ({run_id}) finished'
    page = Dashboard(store, run_id)
    assert all(html.escape(b.splitlines()[0]) in page.alerts.widget.value for b in bodies)


def test_a_nan_run_alerts_once(dls, tmp_path, receiver):
    learn = fit(dls, tmp_path / 'store.db', epochs=1, lr=1e6, alerts=receiver.url)
    run_id, store = learn.watch.run_id, open_store(tmp_path / 'store.db', readonly=True)
    wait_for(lambda: 'finished' in triggers(store, run_id))
    losses = store.batches(run_id)['loss']
    assert sum(loss is None for loss in losses) > 1  # many non-finite losses (stored as NULL) ...
    assert triggers(store, run_id) == ['non_finite', 'finished']  # ... one alert
    assert 'the loss is nan' in receiver.received[0]['message'] or 'the loss is inf' in receiver.received[0]['message']
    assert len(receiver.received) == 2


class Boom(Callback):
    def after_batch(self):
        if self.train_iter == 3: raise RuntimeError('out of memory, say')


def written_triggers(path, run_id) -> list[str]:
    "The run's alert triggers once the writer has created the store ([] before)."
    try: return triggers(open_store(path, readonly=True), run_id)
    except StoreError: return []


def test_a_failed_run_alerts_with_the_error(dls, tmp_path, receiver):
    learn = learner(dls, tmp_path / 'store.db', extra_cbs=[Boom()], alerts=receiver.url)
    with pytest.raises(RuntimeError): train(learn, epochs=1, lr=1e-3)
    run_id = learn.watch.run_id
    wait_for(lambda: written_triggers(tmp_path / 'store.db', run_id))  # the writer notices the fit's end in a moment
    store = open_store(tmp_path / 'store.db', readonly=True)
    assert triggers(store, run_id) == ['failed']
    error = store.run(run_id).error  # what the run's end knows of the error (a caught one leaves no trace)
    assert error and f'failed: {error}' in receiver.received[0]['message']


def test_a_failing_notifier_is_one_warning(dls, tmp_path, receiver):
    port = receiver.server_address[1]
    receiver.shutdown()
    receiver.server_close()  # nothing listens there now
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        learn = fit(dls, tmp_path / 'store.db', epochs=2, lr=0, alerts=f'json://127.0.0.1:{port}',
                    alert_on={'error_rate': '<1.01'})
        wait_for(lambda: 'finished' in written_triggers(tmp_path / 'store.db', learn.watch.run_id))
    messages = [str(w.message) for w in caught if f'run {learn.watch.run_id}' in str(w.message)]
    assert len([m for m in messages if 'could not send an alert' in m]) == 1, messages
    store = open_store(tmp_path / 'store.db', readonly=True)
    alerts = store.alerts(learn.watch.run_id)
    assert [a.trigger for a in alerts] == ['threshold', 'finished'] and not any(a.delivered for a in alerts)
    assert len(learn.recorder.values) == 2


@pytest.mark.parametrize('kwargs, message', [
    ({'alert_on': {'error_rate': 'below 0.05'}}, "alert_on\\['error_rate'\\] takes a threshold"),
    ({'alert_on': {'valid_loss': 'no improvement for 0 epochs'}}, 'at least 1'),
    ({'alert_on': ['error_rate']}, 'alert_on must be a dict'),
    ({'alerts': 'nosuchscheme://x'}, 'apprise cannot send to nosuchscheme://'),
])
def test_bad_alert_arguments_are_one_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message): WatchCallback(**kwargs)
