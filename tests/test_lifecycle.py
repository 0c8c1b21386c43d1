"""A run's lifecycle (fastwatch.record.run) through real fastai trainings on the digits: each transition,
evaluation inside a fit, an exception between fine_tune's fits, the interpreter's exit and a notebook interrupt."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from fastai.callback.core import Callback
from fastai.interpret import ClassificationInterpretation
from helpers import wait_for

from fastwatch import WatchCallback, open_store
from fastwatch.demo.digits import digits_learner
from fastwatch.errors import StoreError
from fastwatch.record.run import BETWEEN_FITS, ENDED, NOT_STARTED, RECORDING
from fastwatch.store.records import STALE_AFTER


class States(Callback):
    "Notes the run's lifecycle state after WatchCallback has seen each fit event."
    order = WatchCallback.order + 1

    def __init__(self): self.seen = []
    def before_fit(self): self.seen.append(('before_fit', self.learn.watch.lifecycle.state))
    def after_epoch(self): self.seen.append(('after_epoch', self.learn.watch.lifecycle.state))
    def after_fit(self): self.seen.append(('after_fit', self.learn.watch.lifecycle.state))


def quietly(learn, method: str, *args, **kwargs):
    with learn.no_bar(), learn.no_logging(): return getattr(learn, method)(*args, **kwargs)


def test_fine_tune_goes_through_every_state_and_a_second_training_is_a_new_run(dls, tmp_path):
    states = States()
    learn = digits_learner(dls, cbs=[WatchCallback(store=tmp_path / 'states.db'), states])
    quietly(learn, 'fine_tune', 1)
    assert states.seen == [('before_fit', NOT_STARTED), ('after_epoch', RECORDING), ('after_fit', BETWEEN_FITS),
                           ('before_fit', BETWEEN_FITS), ('after_epoch', RECORDING), ('after_fit', ENDED)]
    first = learn.watch.run_id
    assert learn.watch.lifecycle.outcome == ('finished', None)
    states.seen.clear()
    quietly(learn, 'validate')  # an evaluation outside a fit starts nothing
    quietly(learn, 'fit', 1)
    assert states.seen == [('before_fit', ENDED), ('after_epoch', ENDED), ('after_fit', ENDED),
                           ('before_fit', ENDED), ('after_epoch', RECORDING), ('after_fit', ENDED)]
    runs = open_store(tmp_path / 'states.db').runs()
    assert [r.status for r in runs] == ['finished', 'finished'] and runs[1].id == first != learn.watch.run_id


def test_an_exception_between_fine_tunes_fits_ends_the_run_failed_promptly(dls, tmp_path):
    learn = digits_learner(dls, cbs=WatchCallback(store=tmp_path / 'between.db'))

    def unfreeze(): raise RuntimeError('between the fits')
    learn.unfreeze = unfreeze  # fine_tune calls it between its two fits
    with pytest.raises(RuntimeError, match='between the fits'): quietly(learn, 'fine_tune', 1)
    assert learn.watch.lifecycle.state == BETWEEN_FITS  # no event told it: the writer thread's probe must notice
    store = open_store(tmp_path / 'between.db')
    # Promptly: within PROBE_GRACE and a writer tick, long before a heartbeat would go stale (STALE_AFTER).
    run = wait_for(lambda: next((r for r in store.runs() if r.status != 'running'), None), timeout=STALE_AFTER)
    assert run.status == 'failed'
    assert run.error == 'the fit stopped with an exception'  # caught by its caller: nothing names it
    assert learn.watch.lifecycle.state == ENDED and len(store.epochs(run.id)) == 1
    del learn.unfreeze
    quietly(learn, 'fine_tune', 1)  # the callback goes on with a new run
    assert [r.status for r in store.runs()] == ['finished', 'failed']


class Evaluate(Callback):
    "Evaluates on a second DataLoader each epoch, the common pattern, and every other way fastai evaluates."
    def __init__(self, other, item):
        self.other, self.item, self.main_logs, self.other_results = other, item, [], []
        self.busy = False  # the evaluations fire before_epoch and after_epoch too

    def before_epoch(self):
        if self.busy: return
        self.busy = True
        self.learn.get_preds(dl=self.other)
        self.busy = False

    def after_epoch(self):
        if self.busy: return
        self.busy = True
        self.main_logs.append([float(v) for v in self.learn.recorder.log[1:4]])  # before validate replaces it
        self.other_results.append(self.learn.validate(dl=self.other))
        self.learn.predict(self.item)
        self.learn.tta(dl=self.other, n=1)
        self.learn.show_results(max_n=2)
        self.busy = False


def test_evaluation_inside_a_fit_neither_ends_nor_pollutes_the_run(dls, tmp_path):
    other = dls.test_dl(dls.train.items[:100], with_labels=True)
    evaluate = Evaluate(other, dls.valid.items[0])
    learn = digits_learner(dls, cbs=[WatchCallback(store=tmp_path / 'eval.db'), evaluate])
    quietly(learn, 'fine_tune', 1)
    store = open_store(tmp_path / 'eval.db')
    [run] = store.runs()
    assert run.status == 'finished' and learn.watch.lifecycle.state == ENDED
    assert store.batches(run.id)['step'] == list(range(2 * len(dls.train)))
    epochs = store.epochs(run.id)
    assert [(e.epoch, e.fit) for e in epochs] == [(0, 0), (1, 1)]
    np.testing.assert_allclose([[e.train_loss, e.valid_loss, e.metrics['error_rate']] for e in epochs],
                               evaluate.main_logs, rtol=1e-6)
    assert all(abs(e.valid_loss - float(o[0])) > 1e-6 for e, o in zip(epochs, evaluate.other_results))
    counts = store.counts(run.id)
    assert counts.pop('item_images') > 0  # the thumbnails of each epoch's new top suspects
    assert counts.pop('system') >= 1  # the process, sampled from the first commit on
    assert counts == {'batches': 2 * len(dls.train), 'epochs': 2, 'confusion': 2, 'top_losses': 32, 'alerts': 0,
                      'items': 2, 'item_epochs': 4, 'decisions': 0}
    for row in store.rows('item_epochs', run.id, split='valid'):  # the validation pass's items, not the others'
        assert row.n_items == len(dls.valid_ds)
    assert [store.confusion(run.id, e).matrix.sum() for e in (0, 1)] == [len(dls.valid_ds)] * 2
    learn.remove_cb(evaluate)  # its get_preds in before_epoch would wait on the lock of fastai's own get_preds
    interp = ClassificationInterpretation.from_learner(learn)
    np.testing.assert_array_equal(store.confusion(run.id).matrix, interp.confusion_matrix())
    assert [t.item_index for t in store.top_losses(run.id)] == interp.top_losses(16)[1].tolist()


EXIT_SCRIPT = '''
import sys
from fastai.callback.core import Callback
from fastwatch import WatchCallback
from fastwatch.demo.digits import digits_dls, digits_learner

try: raise ValueError('an earlier, unrelated error')
except ValueError as e: sys.last_value = e  # as an interactive session keeps the last uncaught error

class Stop(Callback):
    def after_batch(self):
        if self.iter == 2: {stop}

learn = digits_learner(digits_dls(sys.argv[1]), cbs=[WatchCallback(store=sys.argv[2]), Stop()])
learn.fit(1)
'''


@pytest.mark.parametrize('stop, status, error', [
    ('sys.exit(3)', 'interrupted', 'the process exited before the fit ended'),
    ("raise KeyError('fresh')", 'failed', r"KeyError: 'Exception occured in `Stop` .*fresh'")])  # fastai's words
def test_at_exit_only_a_fresh_error_labels_the_run(digits_path, tmp_path, stop, status, error):
    script = tmp_path / 'exit.py'
    script.write_text(EXIT_SCRIPT.format(stop=stop))
    done = subprocess.run([sys.executable, str(script), str(digits_path), str(tmp_path / 'exit.db')],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == (3 if 'exit' in stop else 1), done.stderr[-2000:]
    [run] = open_store(tmp_path / 'exit.db').runs()
    assert run.status == status and re.fullmatch(error, run.error), (run, done.stderr[-2000:])


KERNEL_CODE = '''
import time
from fastai.callback.core import Callback
from fastwatch import WatchCallback
from fastwatch.demo.digits import digits_dls, digits_learner

class Slow(Callback):
    def after_batch(self): time.sleep(0.05)

learn = digits_learner(digits_dls({path!r}), cbs=[WatchCallback(store={store!r}), Slow()])
with learn.no_bar(): learn.fine_tune(50)
'''


def execute(client, code: str, timeout: float = 120) -> tuple[dict, str]:
    "Run `code` in the kernel: its execute_reply content and everything it printed."
    msg_id = client.execute(code)
    printed = []
    while True:
        msg = client.get_iopub_msg(timeout=timeout)
        if msg['parent_header'].get('msg_id') != msg_id: continue
        if msg['msg_type'] == 'stream': printed.append(msg['content']['text'])
        if msg['msg_type'] == 'status' and msg['content']['execution_state'] == 'idle': break
    reply = client.get_shell_msg(timeout=timeout)
    while reply['parent_header'].get('msg_id') != msg_id: reply = client.get_shell_msg(timeout=timeout)
    return reply['content'], ''.join(printed)


def test_a_notebook_interrupt_ends_the_run_interrupted_and_the_kernel_lives_on(digits_path, tmp_path):
    jupyter_client = pytest.importorskip('jupyter_client')
    path = tmp_path / 'kernel.db'
    manager = jupyter_client.KernelManager(kernel_cmd=[sys.executable, '-m', 'ipykernel_launcher', '-f',
                                                       '{connection_file}'])
    manager.start_kernel(env={**os.environ, 'FASTWATCH_STORE': str(path)})
    client = manager.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=120)
        msg_id = client.execute(textwrap.dedent(KERNEL_CODE.format(path=str(digits_path), store=str(path))))

        def steps():
            try: store = open_store(path, readonly=True)
            except StoreError: return 0  # not there yet, or its tables are being created
            runs = store.runs()
            return len(store.batches(runs[0].id)['step']) if runs else 0
        assert wait_for(lambda: steps() > 5, timeout=180)
        manager.interrupt_kernel()
        reply = client.get_shell_msg(timeout=60)
        while reply['parent_header'].get('msg_id') != msg_id: reply = client.get_shell_msg(timeout=60)
        assert reply['content']['status'] == 'error' and reply['content']['ename'] == 'KeyboardInterrupt'
        store = open_store(path, readonly=True)
        run = wait_for(lambda: next((r for r in store.runs() if r.status != 'running'), None), timeout=10)
        assert run and (run.status, run.error) == ('interrupted', 'KeyboardInterrupt')
        reply, printed = execute(client, 'print(learn.watch.lifecycle.state, learn.watch.lifecycle.outcome, 6 * 7)')
        assert reply['status'] == 'ok' and printed.strip() == "ended ('interrupted', 'KeyboardInterrupt') 42"
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


class ValidateInsideThePass(Callback):
    "Validates on a second DataLoader from inside the main validation pass, before WatchCallback ends it."
    order = WatchCallback.order - 1

    def __init__(self, other):
        self.other, self.busy = other, False

    def after_validate(self):
        if self.busy or self.training: return
        self.busy = True
        self.learn.validate(dl=self.other)
        self.busy = False


def test_an_evaluation_inside_the_validation_pass_leaves_that_pass_its_own(dls, tmp_path):
    other = dls.test_dl(dls.train.items[:100], with_labels=True)
    learn = digits_learner(dls, cbs=[WatchCallback(store=tmp_path / 'inside.db'), ValidateInsideThePass(other)])
    quietly(learn, 'fit', 1)
    store = open_store(tmp_path / 'inside.db')
    [run] = store.runs()
    assert run.status == 'finished'
    assert store.confusion(run.id, 0).matrix.sum() == len(dls.valid_ds)
    # The pass's items are the validation set's, however many the inner evaluation had.
    assert [r.n_items for r in store.rows('item_epochs', run.id, split='valid')] == [len(dls.valid_ds)]
    assert all(t.item.startswith('valid/') for t in store.top_losses(run.id, 0))
    learn.remove_cbs([cb for cb in learn.cbs if isinstance(cb, ValidateInsideThePass)])
    interp = ClassificationInterpretation.from_learner(learn)
    np.testing.assert_array_equal(store.confusion(run.id).matrix, interp.confusion_matrix())
