"""Faults while a real training runs: `kill -9`, a store that becomes unwritable (read-only, disk full, locked by
another process, PostgreSQL stopped) and comes back mid-run or only as the process exits, the dashboard's server or
a viewer's kernel crashing. Training must not notice, and no row committed before a fault may be lost.

Each test runs a small seeded training of the digits CNN in a child process (`child_training.py`) that prints every
batch it trained and pauses at chosen batches while the test breaks or mends the store. Breaking a store needs root here
(`chattr +i`, a tmpfs mount, PostgreSQL run as its own user): as root, a plain chmod stops no write.
"""
from __future__ import annotations

import math
import os
import re
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
from child_training import BATCHES, EPOCHS, TOP_K, Training, newest_lost
from helpers import wait_for

from fastwatch import open_store
from fastwatch.cli import run_command
from fastwatch.record.writer import FLUSH_EVERY
from fastwatch.store import HEARTBEAT_SECONDS, RunRecord, records
from fastwatch.store.blocks import BLOCK_LEVELS, block_span
from fastwatch.view.dashboard import Dashboard

PG_BIN = Path('/usr/lib/postgresql/15/bin')
# Batches where outages start and end: one from batch 6 to 20, one from 30 to the process's exit.
# Each spans an epoch's end (its epoch, confusion and top-loss rows) and more batches than BOUNDS keeps.
OUTAGES = [6, 20, 30]
BOUNDS = (10, 4)  # rows of each table, and top losses, the writer keeps: both smaller than what a fault leaves buffered
root_only = pytest.mark.skipif(os.geteuid() != 0, reason='breaking a store this way needs root (.ci/run is root)')

@pytest.fixture(scope='module')
def baseline(few_digits, tmp_path_factory) -> dict:
    "The final weights of the same seeded training without fastwatch."
    training = Training(few_digits, None, tmp_path_factory.mktemp('baseline'))
    training.follow()
    return torch.load(training.weights)


def warnings(stderr: str) -> list[str]:
    "The fastwatch warnings a process printed, by what they say."
    lines = [line for line in stderr.splitlines() if 'RuntimeWarning: fastwatch:' in line]
    return [next((what for what in ('cannot write to the store', 'is writable again', 'still fails at exit')
                  if what in line), line) for line in lines]


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def recorded(location) -> tuple[RunRecord, dict[str, int], list[int]]:
    "The store's only run, how many rows of each kind it has (block summaries too), and its batches' steps."
    db = open_store(location, readonly=True)
    try:
        [run] = db.runs()
        counts = db.counts(run.id)
        counts['batch_blocks'] = len(db.rows('batch_blocks', run.id))
        return run, counts, db.batches(run.id)['step']
    finally: db.close()


def expected_rows(batches: int, epochs: int, item_images: int | None = None, system: int = 0) -> dict[str, int]:
    """The rows a run of `batches` training batches and `epochs` validated epochs makes, by table; `item_images`:
    the thumbnails of its suspects (their number depends on the run), None for a run without `dynamics`; `system`:
    the process's samples (one every `system_every` s)."""
    blocks = sum(math.ceil(batches / block_span(level)) for level in range(BLOCK_LEVELS))
    dynamics = item_images is not None
    return {'batches': batches, 'epochs': epochs, 'confusion': epochs, 'top_losses': epochs * TOP_K, 'alerts': 0,
            'batch_blocks': blocks, 'items': 2 * dynamics, 'item_epochs': 2 * epochs * dynamics,
            'item_images': item_images or 0, 'decisions': 0, 'system': system}


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
def test_training_survives_a_store_that_stops_writing(start_training, baseline, tmp_path, capsys, kind):
    """Two outages: one the store comes back from mid-run, and one it comes back from only as the process exits
    (its writer then waits up to 10 s). Each outage is one warning, and one more when the store is back."""
    fault = FAULTS[kind](tmp_path)
    try:
        open_store(fault.location).close()  # the store exists before the fault, as it would a run later
        # Without the per-item tables and the process's samples, whose counts depend on the run: every table's rows
        # are known.
        training = start_training(fault.location, pause=OUTAGES, sleep=0.1, bounds=BOUNDS, dynamics=False,
                                  system_every=0)
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
                unfinished.append(recorded(fault.location)[0].status)
            time.sleep(1)
            fault.stop()
        training.follow(at_pause, at_done)
        run, counts, steps = recorded(fault.location)
    finally: fault.close()
    stderr = training.stderr()
    assert 'Traceback' not in stderr, stderr
    assert warnings(stderr) == ['cannot write to the store', 'is writable again'] * 2, stderr
    assert same_weights(torch.load(training.weights), baseline)
    assert unfinished in ([], ['running'])  # the last rows came only at exit
    expected = expected_rows(len(training.batches), training.epochs)
    assert (run.status, training.epochs) == ('finished', EPOCHS)
    # Every row made is written or counted lost; the bounds dropped batches and top losses, and nothing else.
    assert sum(counts.values()) + run.lost_rows == sum(expected.values())
    assert counts['batches'] < expected['batches'] and counts['top_losses'] < expected['top_losses']
    assert {k: counts[k] for k in ('epochs', 'confusion', 'batch_blocks')} == {
        k: expected[k] for k in ('epochs', 'confusion', 'batch_blocks')}
    for _, before_counts, before_steps in committed:  # what was committed before each outage is there
        assert set(before_steps) <= set(steps) and all(counts[k] >= n for k, n in before_counts.items())
    trained = [batch for batch, _ in training.batches]
    assert set(steps) <= set(trained) and steps[-BOUNDS[0]:] == trained[-BOUNDS[0]:]  # the newest are kept
    assert f'{run.lost_rows} rows were lost' in stderr
    with capsys.disabled():
        print(f"\n{kind}: {run.lost_rows} of {sum(expected.values())} rows dropped by the buffer's bounds, "
              'none of those committed before an outage')


def test_kill_9_mid_epoch_keeps_every_committed_row(start_training, tmp_path, monkeypatch, capsys):
    location = tmp_path / 'run.db'
    training = start_training(location, epochs=20)
    kill_at = 2 * BATCHES + 6  # the seventh batch of the third epoch
    training.follow(until=lambda t: len(t.batches) > kill_at)
    before = recorded(location)[1]  # committed: what another connection sees now
    training.proc.kill()
    killed = time.time()
    training.follow(returncode=-signal.SIGKILL)  # the lines it printed before it died
    with sqlite3.connect(location) as conn: assert conn.execute('PRAGMA integrity_check').fetchall() == [('ok',)]
    run, after, steps = recorded(location)
    assert all(after[table] >= before[table] for table in before)  # nothing committed was lost
    assert steps == list(range(len(steps))) and after['epochs'] == training.epochs == 2
    missing, newest = newest_lost(steps, training, killed)
    with capsys.disabled(): print(f'\nkill -9: the {missing} newest batch rows lost, trained in the last '
                                  f'{newest:.2f} s')
    assert newest <= FLUSH_EVERY + 0.25  # the writer's interval, and a little for the write itself
    # The run reads as interrupted once its heartbeat is stale (here after 4 s, not 20 s).
    monkeypatch.setattr(records, 'STALE_AFTER', 2 * HEARTBEAT_SECONDS)
    wait_for(lambda: recorded(location)[0].state == 'interrupted', timeout=10)
    capsys.readouterr()
    assert run_command('ls', ['--store', str(location)]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[:2] == [run.id, 'interrupted']
    header = Dashboard(open_store(location, readonly=True)).header.widget.value
    assert run.id in header and "fw-state fw-interrupted'>interrupted<" in header


def pids(*needles: bytes) -> list[int]:
    "The processes whose command line holds every one of `needles`."
    found = []
    for proc in Path('/proc').iterdir():
        try:
            if proc.name.isdigit() and all(n in (proc / 'cmdline').read_bytes() for n in needles):
                found.append(int(proc.name))
        except OSError: continue
    return found


def parent(pid: int) -> int | None:
    "A process's parent, or None once it has gone."
    try: return int(re.search(r'PPid:\s+(\d+)', (Path('/proc') / str(pid) / 'status').read_text())[1])
    except (OSError, TypeError): return None


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f'no chromium at {CHROMIUM} (.ci/run installs it)')
def test_the_dashboard_crashing_leaves_training_alone(start_training, baseline, tmp_path):
    playwright = pytest.importorskip('playwright.sync_api').sync_playwright().start()
    browser = launch(playwright)
    location = tmp_path / 'run.db'
    # It waits before its last two batches if the crashes have not happened by then; its log waits in the pipe.
    open_store(location).close()
    training = start_training(location, pause=[EPOCHS * BATCHES - 2], sleep=0.2)
    orphans = []
    try:
        wait_for(lambda: open_store(location, readonly=True).runs(), timeout=120)  # it has started
        with served(location, tmp_path) as url:
            page = browser.new_page()
            open_dashboard(page, url, timeout=60)
            [viewer] = pids(b'ipykernel', f'kernel-{page_kernel(page)}.json'.encode())
            os.kill(viewer, signal.SIGKILL)
            port = url.rsplit(':', 1)[1].split('/')[0]
            # The server this test started (a child it forks to start a kernel has its command line for a moment).
            [server] = [pid for pid in pids(b'fastwatch.cli', b'serve', f'--port\0{port}\0'.encode())
                        if parent(pid) == os.getpid()]
            orphans = [pid for kernel in kernels(url) for pid in pids(f'kernel-{kernel}.json'.encode())]
            time.sleep(1)  # training runs on between the two crashes
            os.kill(server, signal.SIGKILL)
            crashed = time.time()
            page.close()
        training.follow()
        assert training.batches[-1][1] > crashed + 0.2  # it trained on after the crashes
        assert same_weights(torch.load(training.weights), baseline)
        assert 'Traceback' not in training.stderr() and warnings(training.stderr()) == []
        run, counts, _ = recorded(location)
        assert run.status == 'finished' and counts['item_images'] > 0 and counts['system'] >= 1
        assert counts == expected_rows(len(training.batches), training.epochs, counts['item_images'], counts['system'])
        with served(location, tmp_path) as url:  # a new server shows the run
            page = browser.new_page()
            open_dashboard(page, url, timeout=60)
            header = page.inner_text('.fw-header')
            assert run.id in header and 'finished' in header
    finally:
        browser.close()
        playwright.stop()
        for pid in orphans:  # the preheated kernels of the killed server
            try: os.kill(pid, signal.SIGKILL)
            except ProcessLookupError: pass
