"""Uploads and alerts are network work, done on threads of their own: a bucket or a notifier that accepts the
connection and never answers holds back neither the store's commits nor the training, costs at most one warning,
and lets the process exit within its exit wait. Real trainings in child processes, real silent listeners."""
from __future__ import annotations

import signal
import time

import pytest
from child_training import BATCHES, TOP_K, newest_lost

from fastwatch import open_store
from fastwatch.record.writer import EXIT_WAIT, FLUSH_EVERY


@pytest.fixture
def hanging(silent_port) -> dict:
    "WatchCallback arguments that publish every second and send an alert each epoch, both to a silent listener."
    return {'publish': f'webdav+http://127.0.0.1:{silent_port}/runs', 'publish_every': 1,
            'alerts': f'json://127.0.0.1:{silent_port}', 'alert_on': {'error_rate': '<1.01'}}


def fastwatch_warnings(stderr: str) -> list[str]:
    return [line.split('RuntimeWarning: ', 1)[1] for line in stderr.splitlines() if 'RuntimeWarning: fastwatch' in line]


def test_kill_9_loses_no_more_while_uploads_and_alerts_hang(start_training, tmp_path, hanging, capsys):
    location = tmp_path / 'run.db'
    training = start_training(location, epochs=20, sleep=0.05, **hanging)
    training.follow(until=lambda t: len(t.batches) > 3 * BATCHES + 5)  # uploads and alerts hang meanwhile
    training.proc.kill()
    killed = time.time()
    training.follow(returncode=-signal.SIGKILL)
    store = open_store(location, readonly=True)
    [run] = store.runs()
    steps = store.batches(run.id)['step']
    assert steps == list(range(len(steps))) and len(store.epochs(run.id)) == training.epochs
    missing, newest = newest_lost(steps, training, killed)
    with capsys.disabled(): print(f'\nkill -9 with a hanging bucket and notifier: the {missing} newest batch rows '
                                  f'lost, trained in the last {newest:.2f} s')
    assert newest <= FLUSH_EVERY + 0.25  # as without network work: the writer's interval, and the write itself


def test_a_short_run_ends_finished_with_every_row_and_exits_within_its_exit_wait(start_training, tmp_path,
                                                                                   hanging):
    location = tmp_path / 'run.db'
    training = start_training(location, epochs=2, sleep=0.05, **hanging)
    ended = []
    training.follow(at_done=lambda: ended.append(time.monotonic()))
    exited = time.monotonic()
    # The exit waits for the store, then gives the network work what is left of EXIT_WAIT; the margin is for the
    # interpreter's own teardown on a busy machine.
    assert exited - ended[0] < EXIT_WAIT + 15
    store = open_store(location, readonly=True)
    [run] = store.runs()
    counts = store.counts(run.id)
    assert (run.status, run.lost_rows) == ('finished', 0)
    assert {table: counts[table] for table in ('batches', 'epochs', 'confusion', 'top_losses')} == {
        'batches': len(training.batches), 'epochs': 2, 'confusion': 2, 'top_losses': 2 * TOP_K}
    warned = fastwatch_warnings(training.stderr())
    assert 'Traceback' not in training.stderr()
    assert len([w for w in warned if 'cannot publish' in w]) <= 1, warned  # one outage: one warning at most
    assert len([w for w in warned if 'could not send an alert' in w]) <= 1, warned
