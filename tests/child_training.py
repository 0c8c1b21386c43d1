"""A training in a child process for the fault tests: a small seeded training of the digits CNN (`TRAIN`) that
prints every batch it trained and pauses at chosen batches, and `Training`, which starts it and reads its log."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
EPOCHS, BATCHES, TOP_K = 4, 11, 8  # BATCHES: training batches an epoch (`digits_folder(per_class=24)`, bs 16)

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
    cbs.append(WatchCallback(store=store, name='faults', top_k=spec['top_k'], **spec['watch']))
    rows, items = spec['bounds']
    bounds = Writer.for_store(store).bounds
    bounds.update({table: items if table == 'top_losses' else rows for table in bounds})
learn = digits_learner(digits_dls(digits, bs=16), cbs=cbs)
with learn.no_bar(), learn.no_logging(): learn.fit(spec['epochs'], 1e-2)
torch.save(learn.model.state_dict(), weights)
print('done', flush=True)
"""


class Training:
    "The child training process; `follow` reads its log and acts at its pauses and at its end."

    def __init__(self, digits: Path, location, folder: Path, epochs: int = EPOCHS, pause=(), sleep: float = 0.05,
                 bounds=(1_000_000, 10_000), **watch):
        "`watch`: more arguments of the `WatchCallback` (publish=, alerts=, …)."
        self.weights, self.stderr_path = folder / 'weights.pt', folder / 'stderr.txt'
        spec = {'epochs': epochs, 'pause': list(pause), 'sleep': sleep, 'bounds': list(bounds), 'top_k': TOP_K,
                'watch': watch}
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


def newest_lost(steps: list[int], training: Training, killed: float) -> tuple[int, float]:
    """After `kill -9` at time `killed`: how many batches the training printed but the store lacks (`steps` are the
    stored ones, from 0), and how long before the kill the oldest of them was trained: what the kill lost."""
    trained = dict(training.batches)
    missing = [trained[step] for step in trained if step >= len(steps)]
    return len(missing), killed - min(missing, default=killed)
