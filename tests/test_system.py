"""The training process's CPU and memory, sampled every few seconds from the writer's thread, stored as a run
table, charted on the dashboard and compared in `fastwatch ls`."""
from __future__ import annotations

import json
import threading

import psutil
from fastai.callback.core import Callback
from helpers import cli, train, wait_for

from fastwatch import open_store
from fastwatch.record.system import SystemSampler
from fastwatch.view.dashboard import Dashboard


def test_the_process_is_sampled_off_the_training_thread_and_charted(dls, tmp_path, capsys, monkeypatch):
    threads, sample = [], SystemSampler.sample

    def sample_and_note_the_thread(self):
        threads.append(threading.current_thread())
        return sample(self)
    monkeypatch.setattr(SystemSampler, 'sample', sample_and_note_the_thread)

    class SampledTwice(Callback):
        "Each epoch ends once the sampler has sampled it at least twice, however fast this machine trains."
        ended = 0

        def after_epoch(self):
            SampledTwice.ended += 1
            wait_for(lambda: len(threads) >= 2 * SampledTwice.ended)
    learn = train(dls, tmp_path / 'system.db', epochs=1, extra_cbs=[SampledTwice()], system_every=0.2)
    store, run_id = open_store(tmp_path / 'system.db', readonly=True), learn.watch.run_id
    rows = store.rows('system', run_id)
    assert len(rows) >= 3 and [row.seq for row in rows] == list(range(len(rows)))
    assert threads and all(thread is not threading.main_thread() for thread in threads)
    last_step = store.counts(run_id)['batches'] - 1
    steps = [row.step or 0 for row in rows]
    assert steps == sorted(steps) and 0 <= steps[-1] <= last_step
    rss_now = psutil.Process().memory_info().rss / 2 ** 20
    assert all(50 < row.rss_mb <= 1.5 * rss_now and row.cpu_percent >= 0 for row in rows)
    assert all(row.cuda_allocated_mb is None and row.gpu_percent is None for row in rows)  # a CPU training
    view = Dashboard(store, run_id)
    assert view.chart_grid.charts['memory'].points(run_id, 'rss_mb') == len(rows)
    assert view.chart_grid.charts['cpu'].points(run_id, 'cpu_percent') == len(rows)
    status, out, _ = cli(capsys, 'ls', '--store', str(tmp_path / 'system.db'), '--json')
    assert status == 0 and json.loads(out)[0]['peak_rss_mb'] == max(row.rss_mb for row in rows)


def test_no_samples_when_asked_for_none(dls, tmp_path):
    learn = train(dls, tmp_path / 'quiet.db', epochs=1, system_every=0)
    assert open_store(tmp_path / 'quiet.db').counts(learn.watch.run_id)['system'] == 0
