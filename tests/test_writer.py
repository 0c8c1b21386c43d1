"""The writer never breaks training: failing stores, lost rows, and runs that end without after_fit."""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from fastai.callback.core import Callback
from helpers import train, wait_for

from fastwatch import open_store
from fastwatch.record.writer import Writer
from fastwatch.store import HEARTBEAT_SECONDS, records

ROOT = Path(__file__).parent.parent


def finished_run(path):
    try: runs = open_store(path, readonly=True).runs()
    except Exception: return None
    return runs[0] if runs and runs[0].status != 'running' else None


class Unblock(Callback):
    "Turns the file that blocks the store's folder into that folder after the first epoch."
    def __init__(self, blocker: Path): self.blocker = blocker
    def after_epoch(self):
        if self.blocker.is_file():
            self.blocker.unlink()
            self.blocker.mkdir()


def record_through_outage(dls, tmp_path, max_buffered: int | None):
    blocker = tmp_path / 'blocked'
    blocker.write_text('a file where the store folder should be')
    path = blocker / 'run.db'
    if max_buffered:
        Writer.for_store(path).bounds['batches'] = max_buffered
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        learn = train(dls, path, epochs=1, extra_cbs=[Unblock(blocker)])
        recovered = lambda: [str(w.message) for w in caught if 'writable again' in str(w.message)]
        run = wait_for(lambda: recovered() and finished_run(path))
    messages = [str(w.message) for w in caught if 'fastwatch' in str(w.message)]
    return learn, path, run, messages


def test_a_store_that_fails_then_recovers_loses_nothing(dls, tmp_path):
    learn, path, run, messages = record_through_outage(dls, tmp_path, max_buffered=None)
    assert len(learn.recorder.values) == 1  # training went on
    assert any('cannot write to the store' in m for m in messages)
    assert any('writable again after' in m and m.endswith('; nothing was lost') for m in messages)
    assert run.status == 'finished' and run.lost_rows == 0
    assert open_store(path).counts(run.id)['batches'] == 2 * len(dls.train)


def test_a_long_outage_drops_the_oldest_rows_and_counts_them(dls, tmp_path):
    learn, path, run, messages = record_through_outage(dls, tmp_path, max_buffered=5)
    recorded = open_store(path).batches(run.id)['step']
    assert run.lost_rows > 0 and len(recorded) + run.lost_rows == 2 * len(dls.train)
    assert recorded[-1] == 2 * len(dls.train) - 1  # the newest rows were kept
    assert any(m.endswith(f"; {run.lost_rows} rows were lost") for m in messages)


SCRIPT = '''
import sys; sys.path.insert(0, "tests")
from fastai.callback.core import Callback
from fastwatch.demo.digits import digits_dls
from helpers import train

class Boom(Callback):
    def after_batch(self):
        if self.training and self.iter == 3: raise ValueError("boom")

learn = train(digits_dls(sys.argv[1]), sys.argv[2], epochs={"boom": 1, "once": 1}.get(sys.argv[3], 50),
              extra_cbs=[Boom()] if sys.argv[3] == "boom" else [])
print("trained", len(learn.recorder.values))
'''


def run_script(digits_path, store_path, mode: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, '-c', SCRIPT, str(digits_path), str(store_path), mode], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def live_run(path):
    try: store_ = open_store(path, readonly=True)
    except Exception: return None
    runs = store_.runs()
    return runs and store_.counts(runs[0].id)['batches'] > 3 and runs[0]


@pytest.mark.parametrize('server', ['refusing', 'silent'])
def test_a_store_that_never_comes_back_is_two_warnings_and_a_bounded_exit(digits_path, server, request):
    "The process trains, waits at most EXIT_WAIT s for the store at exit, and says what it could not write."
    port = 9 if server == 'refusing' else request.getfixturevalue('silent_port')
    proc = run_script(digits_path, f'postgresql://fastwatch:fastwatch@127.0.0.1:{port}/nowhere', 'once')
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and out.splitlines()[-1] == 'trained 1'  # fine_tune(1)'s last fit: 1 epoch
    messages = [line.split('RuntimeWarning: ', 1)[1] for line in err.splitlines()
                if 'RuntimeWarning: fastwatch' in line]
    assert len(messages) == 2 and 'Traceback' not in err, err
    assert messages[0].startswith('fastwatch: cannot write to the store postgresql+psycopg://fastwatch:***@')
    assert re.fullmatch(r'fastwatch: the store .* still fails at exit: \d+ rows were not written', messages[1])


def test_an_uncaught_exception_ends_the_run_as_failed(digits_path, tmp_path):
    proc = run_script(digits_path, tmp_path / 'f.db', 'boom')
    assert proc.wait(timeout=300) == 1 and 'boom' in proc.stderr.read()
    run = open_store(tmp_path / 'f.db').runs()[0]
    assert run.status == 'failed' and 'ValueError' in run.error and 'boom' in run.error


def test_ctrl_c_ends_the_run_as_interrupted(digits_path, tmp_path):
    proc = run_script(digits_path, tmp_path / 'i.db', 'long')
    assert wait_for(lambda: live_run(tmp_path / 'i.db')).state == 'live'
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) != 0
    run = open_store(tmp_path / 'i.db').runs()[0]
    assert (run.status, run.state, run.error) == ('interrupted', 'interrupted', 'KeyboardInterrupt')


def test_a_killed_process_is_reported_interrupted_once_its_heartbeat_is_stale(digits_path, tmp_path, monkeypatch):
    proc = run_script(digits_path, tmp_path / 'k.db', 'long')
    run = wait_for(lambda: live_run(tmp_path / 'k.db'))
    proc.kill()
    proc.wait(timeout=60)
    monkeypatch.setattr(records, 'STALE_AFTER', 2 * HEARTBEAT_SECONDS)
    assert open_store(tmp_path / 'k.db').run(run.id).status == 'running'
    assert wait_for(lambda: open_store(tmp_path / 'k.db').run(run.id).state == 'interrupted', timeout=10)
