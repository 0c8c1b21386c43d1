"""Faults while a real training runs: `kill -9`, a store that becomes unwritable (read-only, disk full, locked by
another process, PostgreSQL stopped) and comes back mid-run or only as the process exits, the dashboard's server or
a viewer's kernel crashing. Training must not notice, and no row committed before a fault may be lost.

Each test runs a small seeded training of the digits CNN in a child process (`TRAIN`) that prints every batch it
trained and pauses at chosen batches while the test breaks or mends the store. Breaking a store needs root here
(`chattr +i`, a tmpfs mount, PostgreSQL run as its own user): as root, a plain chmod stops no write.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from browser import CHROMIUM, free_port, kernels, launch, open_dashboard, page_kernel, served
from conftest import wait_for
from sqlalchemy import func, select

from fastwatch import open_store
from fastwatch.cli import run_command
from fastwatch.demo.digits import digits_folder
from fastwatch.store import schema, store
from fastwatch.store.schema import batch_blocks
from fastwatch.view.dashboard import Dashboard

ROOT = Path(__file__).parent.parent
PG_BIN = Path('/usr/lib/postgresql/15/bin')
EPOCHS, BATCHES, TOP_K = 4, 11, 8  # BATCHES: training batches an epoch (see `digits`)
# Batches where outages start and end: one from batch 6 to 20, one from 30 to the process's exit.
# Each spans an epoch's end (its epoch, confusion and top-loss rows) and more batches than BOUNDS keeps.
OUTAGES = [6, 20, 30]
BOUNDS = (10, 4)  # Writer.max_buffered, max_buffered_items: both smaller than what the fault leaves buffered
FLUSH_EVERY = 0.5  # the writer's flush interval: what kill -9 may lose
root_only = pytest.mark.skipif(os.geteuid() != 0, reason='breaking a store this way needs root (.ci/run is root)')

TRAIN = """import json, sys, time
import torch
from fastai.callback.core import Callback
from fastai.torch_core import set_seed
from fastwatch import WatchCallback
from fastwatch.demo.digits import digits_dls, digits_learner
from fastwatch.record.writer import Writer

digits, store, weights, spec = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
torch.set_num_threads(1)

class TrainLog(Callback):
    "After WatchCallback has the batch: print it, pause where asked (until a line on stdin), then take a moment."
    order = 90
    def before_fit(self): self.n = 0
    def after_batch(self):
        if not self.training: return
        print(f'batch {self.n} {time.time()}', flush=True)
        if self.n in spec['pause']:
            print(f'pause {self.n}', flush=True)
            sys.stdin.readline()
        self.n += 1
        time.sleep(spec['sleep'])
    def after_epoch(self): print(f'epoch {self.epoch}', flush=True)

set_seed(0, reproducible=True)
cbs = [TrainLog()]
if store:
    cbs.append(WatchCallback(store=store, name='faults', top_k=spec['top_k']))
    writer = Writer.for_store(store)
    writer.max_buffered, writer.max_buffered_items = spec['bounds']
learn = digits_learner(digits_dls(digits, bs=16), cbs=cbs)
with learn.no_bar(), learn.no_logging(): learn.fit(spec['epochs'], 1e-2)
torch.save(learn.model.state_dict(), weights)
print('done', flush=True)
"""


class Training:
    "The child training process; `follow` reads its log and acts at its pauses and at its end."

    def __init__(self, digits: Path, location, folder: Path, epochs: int = EPOCHS, pause=(), sleep: float = 0.05,
                 bounds=(1_000_000, 10_000)):
        self.weights, self.stderr_path = folder / 'weights.pt', folder / 'stderr.txt'
        spec = {'epochs': epochs, 'pause': list(pause), 'sleep': sleep, 'bounds': list(bounds), 'top_k': TOP_K}
        with open(self.stderr_path, 'w') as stderr:
            self.proc = subprocess.Popen([sys.executable, '-c', TRAIN, str(digits), str(location or ''),
                                          str(self.weights), json.dumps(spec)], cwd=ROOT, text=True,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr)
        self.batches: list[tuple[int, float]] = []  # (batch, when its line came)
        self.epochs = 0

    def follow(self, at_pause=None, at_done=None, until=None, returncode: int = 0) -> None:
        "Read the log to its end (or until `until(self)`), calling `at_pause(batch)` and `at_done()`."
        for line in self.proc.stdout:
            kind, *rest = line.split()
            if kind == 'batch': self.batches.append((int(rest[0]), float(rest[1])))
            elif kind == 'epoch': self.epochs += 1
            elif kind == 'pause':
                if at_pause: at_pause(int(rest[0]))
                self.proc.stdin.write('\n')
                self.proc.stdin.flush()
            elif kind == 'done' and at_done: at_done()
            if until and until(self): return
        assert self.proc.wait(timeout=120) == returncode, self.stderr()

    def stderr(self) -> str: return self.stderr_path.read_text()


@pytest.fixture(scope='module')
def digits(tmp_path_factory) -> Path:
    "240 digits: 50 to validate, 190 to train on in 11 batches of 16 an epoch (fastai drops the last, partial one)."
    return digits_folder(tmp_path_factory.mktemp('digits'), per_class=24)


@pytest.fixture(scope='module')
def baseline(digits, tmp_path_factory) -> dict:
    "The final weights of the same seeded training without fastwatch."
    training = Training(digits, None, tmp_path_factory.mktemp('baseline'))
    training.follow()
    return torch.load(training.weights)


@pytest.fixture
def start(digits, tmp_path):
    "Start trainings on the digits (`Training`'s arguments but the first and third); they are killed if left running."
    started = []

    def start(location, **kwargs) -> Training:
        started.append(Training(digits, location, tmp_path, **kwargs))
        return started[-1]
    yield start
    for training in started:
        if training.proc.poll() is None:
            training.proc.kill()
            training.proc.wait()


def warnings(stderr: str) -> list[str]:
    "The fastwatch warnings a process printed, by what they say."
    lines = [line for line in stderr.splitlines() if 'RuntimeWarning: fastwatch:' in line]
    return [next((what for what in ('cannot write to the store', 'is writable again', 'still fails at exit')
                  if what in line), line) for line in lines]


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def recorded(location) -> tuple[dict, dict[str, int]]:
    "The store's only run and how many rows of each kind it has."
    db = open_store(location, readonly=True)
    try:
        [run] = db.runs()
        counts = db.counts(run['id'])
        with db.engine.connect() as conn:
            counts['batch_blocks'] = conn.execute(
                select(func.count()).select_from(batch_blocks).where(batch_blocks.c.run_id == run['id'])).scalar()
        run['steps'] = db.batches(run['id'])['step']
        return run, counts
    finally: db.close()


def expected_rows(batches: int, epochs: int) -> dict[str, int]:
    "The rows a run of `batches` training batches and `epochs` validated epochs makes, by table."
    blocks = sum(math.ceil(batches / (schema.BLOCK_STEPS * schema.BLOCK_FANOUT ** level))
                 for level in range(schema.BLOCK_LEVELS))
    return {'batches': batches, 'epochs': epochs, 'confusion': epochs, 'top_losses': epochs * TOP_K,
            'batch_blocks': blocks}


# --- ways to break a store ------------------------------------------------------------------------------------
class Immutable:
    "The store's folder and files made immutable (`chattr +i`; root ignores permissions, not this)."
    def __init__(self, folder: Path):
        self.folder = folder / 'store'
        self.folder.mkdir()
        self.location = self.folder / 'run.db'

    def paths(self) -> list[str]:
        # Not the -shm file: SQLite maps it, and a write to an immutable mapped page is SIGBUS.
        return [str(self.folder), str(self.location), f'{self.location}-wal']

    def start(self): subprocess.run(['chattr', '+i', *self.paths()], check=True)
    def stop(self): subprocess.run(['chattr', '-i', *self.paths()], check=True)
    def close(self): subprocess.run(['chattr', '-i', *self.paths()], capture_output=True)


class DiskFull:
    "The store on a 16 MB tmpfs, whose free space a file then takes."
    def __init__(self, folder: Path):
        self.mount = folder / 'disk'
        self.mount.mkdir()
        done = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=16m', 'tmpfs', str(self.mount)],
                              capture_output=True, text=True)
        if done.returncode: pytest.skip(f'cannot mount a tmpfs here: {done.stderr.strip()}')
        self.location, self.filler = self.mount / 'run.db', self.mount / 'filler'

    def start(self):
        block = b'\0' * 65536
        with open(self.filler, 'wb', buffering=0) as f:
            try:
                while True: f.write(block)
            except OSError: pass
            for size in (4096, 512, 1):  # the last pages too
                try:
                    while True: f.write(block[:size])
                except OSError: pass

    def stop(self): self.filler.unlink()
    def close(self): subprocess.run(['umount', '-l', str(self.mount)], capture_output=True)


class Locked:
    "Another process holds an exclusive lock on the store (`BEGIN EXCLUSIVE`) until it is told to let go."
    HOLD = ('import sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None); '
            'c.execute("BEGIN EXCLUSIVE"); print("locked", flush=True); sys.stdin.readline(); c.execute("COMMIT")')

    def __init__(self, folder: Path):
        self.location, self.holder = folder / 'run.db', None

    def start(self):
        self.holder = subprocess.Popen([sys.executable, '-c', self.HOLD, str(self.location)], text=True,
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.holder.stdout.readline() == 'locked\n'

    def stop(self):
        self.holder.stdin.close()
        assert self.holder.wait(timeout=10) == 0

    def close(self):
        if self.holder and self.holder.poll() is None: self.holder.kill()


class PostgresStopped:
    "A private PostgreSQL server (not the shared one on 5432), stopped and started again."
    def __init__(self, folder: Path):
        if not (PG_BIN / 'initdb').exists(): pytest.skip(f'no PostgreSQL server binaries in {PG_BIN}')
        self.data = Path(tempfile.mkdtemp(prefix='fastwatch-pg-'))  # the postgres user must reach it
        shutil.chown(self.data, 'postgres')
        self.port = free_port()
        self.pg('initdb', '-D', str(self.data / 'db'), '--auth=trust', '-U', 'postgres')
        self.launch()
        self.location = f'postgresql://postgres@127.0.0.1:{self.port}/postgres'

    def start(self): self.halt()
    def stop(self): self.launch()

    def pg(self, tool: str, *args: str) -> None:
        subprocess.run(['runuser', '-u', 'postgres', '--', str(PG_BIN / tool), *args], check=True,
                       capture_output=True, cwd=self.data)

    def launch(self) -> None:
        self.pg('pg_ctl', '-D', str(self.data / 'db'), '-l', str(self.data / 'log'), '-w',
                '-o', f'-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1', 'start')
        self.running = True

    def halt(self, mode: str = 'fast'):
        self.pg('pg_ctl', '-D', str(self.data / 'db'), '-m', mode, '-w', 'stop')
        self.running = False

    def close(self):
        if self.running: self.halt('immediate')
        shutil.rmtree(self.data, ignore_errors=True)


FAULTS = {'read-only': Immutable, 'disk full': DiskFull, 'locked': Locked, 'postgresql stopped': PostgresStopped}


@root_only
@pytest.mark.parametrize('kind', list(FAULTS))
def test_training_survives_a_store_that_stops_writing(start, baseline, tmp_path, capsys, kind):
    """Two outages: one the store comes back from mid-run, and one it comes back from only as the process exits
    (its writer then waits up to 10 s). Each outage is one warning, and one more when the store is back."""
    fault = FAULTS[kind](tmp_path)
    try:
        open_store(fault.location).close()  # the store exists before the fault, as it would a run later
        training = start(fault.location, pause=OUTAGES, sleep=0.1, bounds=BOUNDS)
        committed, unfinished = [], []

        def at_pause(batch: int):
            if batch in OUTAGES[::2]:
                committed.append(recorded(fault.location))
                failures = training.stderr().count('cannot write to the store')
                fault.start()
                # The outage lasts until the writer has met it: a lock shorter than SQLite's wait would never show.
                wait_for(lambda: training.stderr().count('cannot write to the store') > failures)
            else:
                fault.stop()
                wait_for(lambda: 'is writable again' in training.stderr())

        def at_done():  # the child now exits; its writer waits for the store
            if kind != 'postgresql stopped':  # a stopped server cannot be read either
                unfinished.append(recorded(fault.location)[0]['status'])
            time.sleep(1)
            fault.stop()
        training.follow(at_pause, at_done)
        run, counts = recorded(fault.location)
    finally: fault.close()
    stderr = training.stderr()
    assert 'Traceback' not in stderr, stderr
    assert warnings(stderr) == ['cannot write to the store', 'is writable again'] * 2, stderr
    assert same_weights(torch.load(training.weights), baseline)
    assert unfinished in ([], ['running'])  # the last rows came only at exit
    expected = expected_rows(len(training.batches), training.epochs)
    assert (run['status'], training.epochs) == ('finished', EPOCHS)
    # Every row made is written or counted lost; the bounds dropped batches and top losses, and nothing else.
    assert sum(counts.values()) + run['lost_rows'] == sum(expected.values())
    assert counts['batches'] < expected['batches'] and counts['top_losses'] < expected['top_losses']
    assert {k: counts[k] for k in ('epochs', 'confusion', 'batch_blocks')} == {
        k: expected[k] for k in ('epochs', 'confusion', 'batch_blocks')}
    for before, before_counts in committed:  # what was committed before each outage is there
        assert set(before['steps']) <= set(run['steps']) and all(counts[k] >= n for k, n in before_counts.items())
    steps, trained = run['steps'], [batch for batch, _ in training.batches]
    assert set(steps) <= set(trained) and steps[-BOUNDS[0]:] == trained[-BOUNDS[0]:]  # the newest are kept
    assert f"{run['lost_rows']} rows were lost" in stderr
    with capsys.disabled():
        print(f"\n{kind}: {run['lost_rows']} of {sum(expected.values())} rows dropped by the buffer's bounds, "
              'none of those committed before an outage')


def test_kill_9_mid_epoch_keeps_every_committed_row(start, tmp_path, monkeypatch, capsys):
    location = tmp_path / 'run.db'
    training = start(location, epochs=20)
    kill_at = 2 * BATCHES + 6  # the seventh batch of the third epoch
    training.follow(until=lambda t: len(t.batches) > kill_at)
    before = recorded(location)[1]  # committed: what another connection sees now
    training.proc.kill()
    killed = time.time()
    training.follow(returncode=-signal.SIGKILL)  # the lines it printed before it died
    with sqlite3.connect(location) as conn: assert conn.execute('PRAGMA integrity_check').fetchall() == [('ok',)]
    run, after = recorded(location)
    assert all(after[table] >= before[table] for table in before)  # nothing committed was lost
    steps, trained = run['steps'], dict(training.batches)
    assert steps == list(range(len(steps))) and after['epochs'] == training.epochs == 2
    missing = [trained[step] for step in trained if step >= len(steps)]  # trained, but not in the store
    newest = killed - min(missing, default=killed)
    with capsys.disabled(): print(f'\nkill -9: the {len(missing)} newest batch rows lost, trained in the last '
                                  f'{newest:.2f} s')
    assert newest <= FLUSH_EVERY + 0.25  # the writer's interval, and a little for the write itself
    # The run reads as interrupted once its heartbeat is stale (here after 4 s, not 20 s).
    monkeypatch.setattr(store, 'STALE_AFTER', 2 * store.HEARTBEAT_SECONDS)
    wait_for(lambda: recorded(location)[0]['state'] == 'interrupted', timeout=10)
    capsys.readouterr()
    assert run_command('ls', ['--store', str(location)]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[:2] == [run['id'], 'interrupted']
    header = Dashboard(open_store(location, readonly=True)).header.value
    assert run['id'] in header and "fw-state fw-interrupted'>interrupted<" in header


def pids(*needles: bytes) -> list[int]:
    "The processes whose command line holds every one of `needles`."
    found = []
    for proc in Path('/proc').iterdir():
        try:
            if proc.name.isdigit() and all(n in (proc / 'cmdline').read_bytes() for n in needles):
                found.append(int(proc.name))
        except OSError: continue
    return found


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f'no chromium at {CHROMIUM} (.ci/run installs it)')
def test_the_dashboard_crashing_leaves_training_alone(start, baseline, tmp_path):
    playwright = pytest.importorskip('playwright.sync_api').sync_playwright().start()
    browser = launch(playwright)
    location = tmp_path / 'run.db'
    # It waits before its last two batches if the crashes have not happened by then; its log waits in the pipe.
    open_store(location).close()
    training = start(location, pause=[EPOCHS * BATCHES - 2], sleep=0.2)
    orphans = []
    try:
        wait_for(lambda: open_store(location, readonly=True).runs(), timeout=120)  # it has started
        with served(location, tmp_path) as url:
            page = browser.new_page()
            open_dashboard(page, url, timeout=60)
            [viewer] = pids(b'ipykernel', f'kernel-{page_kernel(page)}.json'.encode())
            os.kill(viewer, signal.SIGKILL)
            port = url.rsplit(':', 1)[1].split('/')[0]
            [server] = pids(b'fastwatch.cli', b'serve', f'--port\0{port}\0'.encode())
            orphans = [pid for kernel in kernels(url) for pid in pids(f'kernel-{kernel}.json'.encode())]
            time.sleep(1)  # training runs on between the two crashes
            os.kill(server, signal.SIGKILL)
            crashed = time.time()
            page.close()
        training.follow()
        assert training.batches[-1][1] > crashed + 0.2  # it trained on after the crashes
        assert same_weights(torch.load(training.weights), baseline)
        assert 'Traceback' not in training.stderr() and warnings(training.stderr()) == []
        run, counts = recorded(location)
        assert run['status'] == 'finished' and counts == expected_rows(len(training.batches), training.epochs)
        with served(location, tmp_path) as url:  # a new server shows the run
            page = browser.new_page()
            open_dashboard(page, url, timeout=60)
            header = page.inner_text('.fw-header')
            assert run['id'] in header and 'finished' in header
    finally:
        browser.close()
        playwright.stop()
        for pid in orphans:  # the preheated kernels of the killed server
            try: os.kill(pid, signal.SIGKILL)
            except ProcessLookupError: pass
