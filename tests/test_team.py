"""A team's store under load: four training processes record into one store while three dashboards follow it, on
PostgreSQL and on one SQLite file. No lock errors, no lost rows (each run's rows counted against what its fastai
Recorder saw), no mixed runs, and every dashboard ends up showing all four runs finished."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest
from helpers import wait_for

from fastwatch import open_store
from fastwatch.view.dashboard import Dashboard

TRAINERS, DASHBOARDS, EPOCHS = 4, 3, 1
# A training that prints what fastai saw: the training batches of both fits of fine_tune, its epochs (the frozen
# one, then the Recorder's of the second fit) and the last valid loss.
TRAIN = """import json, sys
from fastai.callback.core import Callback
from fastwatch import WatchCallback
from fastwatch.demo.digits import digits_dls, digits_learner
class Count(Callback):
    batches = 0
    def after_batch(self):
        if self.training: Count.batches += 1
learn = digits_learner(digits_dls(sys.argv[1]), cbs=[WatchCallback(store=sys.argv[2], name=sys.argv[3]), Count()])
with learn.no_bar(), learn.no_logging(): learn.fine_tune(int(sys.argv[4]), base_lr=1e-2)
print(json.dumps({'run': learn.watch.run_id, 'batches': Count.batches, 'epochs': len(learn.recorder.values) + 1,
                  'valid_loss': float(learn.recorder.values[-1][1])}))
"""


@pytest.fixture(params=['sqlite', 'postgresql'])
def team_store(request, tmp_path):
    if request.param == 'sqlite': return f'sqlite:///{tmp_path / "team.db"}'
    return request.getfixturevalue('postgres_url')


def test_four_trainers_and_three_dashboards_share_one_store(team_store, digits_path):
    open_store(team_store).close()  # the schema, before anyone reads
    views = [Dashboard(open_store(team_store, readonly=True)) for _ in range(DASHBOARDS)]
    for view in views: view.policy.runs_every = 0.2
    errors, done = [], threading.Event()

    def follow(view: Dashboard) -> None:
        while not done.is_set():
            try: view.refresh()
            except Exception as e: errors.append(repr(e))
            if view.status.widget.value: errors.append(view.status.widget.value)
            done.wait(0.25)  # as often as a page polls a live run
    followers = [threading.Thread(target=follow, args=(view,)) for view in views]
    for thread in followers: thread.start()
    trainers = [subprocess.Popen([sys.executable, '-c', TRAIN, str(digits_path), team_store, f'trainer {i}',
                                  str(EPOCHS)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env={**os.environ, 'OMP_NUM_THREADS': '1'})  # four on two cores
                for i in range(TRAINERS)]
    try:
        finished = [trainer.communicate(timeout=600) for trainer in trainers]
    finally:
        for trainer in trainers: trainer.kill()
        done.set()
        for thread in followers: thread.join(60)
    for trainer, (_, err) in zip(trainers, finished):
        assert trainer.returncode == 0, err[-3000:]
        assert 'fastwatch' not in err, err[-3000:]  # no warning of a store that failed or a row it lost
    seen = [json.loads(out.strip().splitlines()[-1]) for out, _ in finished]
    assert errors == []
    store = open_store(team_store, readonly=True)
    assert sorted(run.name for run in store.runs()) == [f'trainer {i}' for i in range(TRAINERS)]
    for i, trained in enumerate(seen):
        run = store.run(trained['run'])
        assert run.name == f'trainer {i}' and run.state == 'finished' and run.lost_rows == 0
        batches, epochs = store.batches(run.id), store.epochs(run.id)
        assert batches['step'] == list(range(trained['batches']))  # every row, once, of this run only
        assert len(epochs) == trained['epochs'] and epochs[-1].valid_loss == pytest.approx(trained['valid_loss'])
    for view in views:
        view.refresh()
        wait_for(lambda view=view: view.refresh() or all(r.state == 'finished' for r in view.runs.runs), timeout=30)
        assert len(view.runs.summaries) == TRAINERS
        assert all(s.epochs_done == t['epochs'] for t in seen for s in view.runs.summaries if s.run.id == t['run'])
