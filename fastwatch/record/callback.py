"""`WatchCallback`: records a fastai training run (both fits of `fine_tune` as one run) into a fastwatch store."""
from __future__ import annotations

import base64
import json
import platform
import secrets
import sys
import threading
import time
import warnings

import fastai
import torch
from fastai.callback.core import Callback
from fastai.learner import Learner, Recorder
from fastai.torch_core import rank_distrib
from fastcore.foundation import L

from .. import __version__
from ..store.confusion import cells_of, pack_cells
from .validation import ValidationCollector, decoded_inputs, item_name, render_input
from .writer import Writer, exit_outcome

PROBE_GRACE = 1.0  # seconds


def new_run_id() -> str:
    "64 random bits from `secrets`, as 13 lowercase base32 characters: URL-safe, unguessable, readable aloud."
    return base64.b32encode(secrets.token_bytes(8)).decode().rstrip('=').lower()


def _caller_frame(name: str, learn: Learner):
    "The frame of `learn.<name>(...)` on the current call stack, if any."
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == name and frame.f_locals.get('self') is learn: return frame
        frame = frame.f_back
    return None


def class_names(dls) -> list[str] | None:
    "The class names, as ClassificationInterpretation finds them: `dls.vocab`, or its last part for text data."
    vocab = getattr(dls, 'vocab', None)
    if vocab is None or not len(vocab): return None
    if isinstance(vocab, (list, tuple, L)) and not isinstance(vocab[-1], str): vocab = vocab[-1]
    return [str(v) for v in vocab]


def _plain(value):
    "A JSON-friendly form of a fit argument or metric (tensors, slices, arrays of learning rates)."
    if isinstance(value, torch.Tensor): return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, slice): return [_plain(value.start), _plain(value.stop)]
    if isinstance(value, (list, tuple)): return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)): return value
    try: return float(value)
    except (TypeError, ValueError): return str(value)


class WatchCallback(Callback):
    """Record losses, learning rate, metrics, confusion matrices and top losses of every fit to a store.

    `store`: a path or SQLAlchemy URL (default `$FASTWATCH_STORE`, then `./fastwatch.db`); `name`: a run name;
    `config`: any JSON-friendly dict to keep with the run; `top_k`: highest-loss items kept per validation pass;
    `thumb_size`: longest side of their thumbnails in pixels."""
    order = Recorder.order + 1  # after Recorder has smoothed the loss and logged the metrics
    remove_on_fetch = True

    def __init__(self, store=None, name: str | None = None, config: dict | None = None, top_k: int = 16,
                 thumb_size: int = 128):
        if top_k < 0: raise ValueError(f'WatchCallback: top_k must be 0 or more, not {top_k}')
        if thumb_size < 1: raise ValueError(f'WatchCallback: thumb_size must be at least 1 pixel, not {thumb_size}')
        if not isinstance(config or {}, dict): raise ValueError(f'WatchCallback: config must be a dict, not {config!r}')
        self.store, self.run_name, self.config = store, name, config or {}
        self.top_k, self.thumb_size = top_k, thumb_size
        self.run_id, self.writer, self.disabled, self.in_fit = None, None, False, False
        self._fine_tune, self._fine_tune_fits = None, 0
        self._lock = threading.Lock()

    def __call__(self, event_name):
        "Run this callback's method for the event, if it has one; never let an error in it fail the fit."
        method = getattr(type(self), event_name, None)  # fastai calls every callback for each of ~10 events a batch
        if self.disabled or method is None: return
        try: return method(self)
        except Exception as e:
            self.disabled, error = True, ' '.join(f'{type(e).__name__}: {e}'.split())[:500]
            warnings.warn(f'fastwatch: recording stopped after an error in {event_name}: {error}. Training goes on.',
                          RuntimeWarning)
            if self.run_id is not None: self.writer.end_run(self.run_id, 'failed', f'fastwatch stopped: {error}')

    def before_fit(self):
        "Decide whether this fit is recorded; lr_find and get_preds announce themselves and are not."
        if self.in_fit: self._end_abandoned_fit()  # the last fit raised before its probe noticed
        # One run per training, however many processes distrib_ctx starts: only rank 0 records.
        self.recording = not (hasattr(self.learn, 'lr_finder') or hasattr(self.learn, 'gather_preds')
                              or rank_distrib() != 0)
        self.trained = False  # validate() runs before_fit but never before_train: a run starts at first training
        fine_tune = _caller_frame('fine_tune', self.learn)
        if fine_tune is not None and fine_tune is self._fine_tune: self._fine_tune_fits += 1
        else: self._fine_tune, self._fine_tune_fits = fine_tune, 1

    def before_train(self):
        if not self.recording: return
        if not self.trained:
            self.trained = True
            if self.run_id is None: self._start_run()
            self._start_fit()
        self.epoch_start = time.time()

    def after_batch(self):
        learn = self.learn  # the hot path: read the Learner's attributes directly, not through the callback
        if not (self.trained and len(learn.yb)): return
        if not learn.training:
            self.collector.add_batch()
            return
        groups = learn.opt.hypers
        hypers = groups[-1]
        with torch._C.DisableTorchFunctionSubclass(): loss = learn.loss.detach()  # 7x faster on fastai's tensors
        self.writer.add_batch((self.run_id, self.step, self.global_epoch, self.fit_index, self.frozen, loss,
                               getattr(learn, 'smooth_loss', None), hypers.get('lr'), hypers.get('mom'), time.time(),
                               [h.get('lr') for h in groups] if len(groups) > 1 else None))
        self.step += 1

    def before_validate(self):
        if self.trained: self.collector = ValidationCollector(self.learn, self.top_k)

    def after_validate(self):
        if not self.trained: return
        result = self.collector.result()
        self.collector = None
        if result is not None: self._record_validation(result)

    def after_epoch(self):
        if not self.trained: return
        recorder = self.learn.recorder
        values = {name: _plain(value) for name, value in zip(recorder.metric_names, recorder.log)}
        for name in ('epoch', 'time'): values.pop(name, None)
        now = time.time()
        self.writer.add_rows('epochs', [{
            'run_id': self.run_id, 'epoch': self.global_epoch, 'fit': self.fit_index, 'frozen': self.frozen,
            'step': self.step - 1, 'train_loss': values.pop('train_loss', None),
            'valid_loss': values.pop('valid_loss', None), 'metrics': json.dumps(values),
            'duration': now - self.epoch_start, 'time': now}])
        self.global_epoch += 1
        self.writer.flush(timeout=0)

    def after_fit(self):
        if not self.trained: return
        with self._lock:
            self.in_fit = False
            if self._fine_tune is not None and self._fine_tune_fits == 1: return  # fine_tune's second fit follows
            self.writer.end_run(self.run_id, 'finished')
            self.run_id, self._fine_tune = None, None
        self.writer.flush(timeout=10)

    # --- helpers --------------------------------------------------------------------------------------------
    def _start_run(self) -> None:
        self.writer = Writer.for_store(self.store)
        self.run_id, self.step, self.global_epoch, self.fit_index = new_run_id(), 0, 0, -1
        self.fits, self.info = [], self._info()
        now = time.time()
        self.class_names = class_names(self.learn.dls)
        run = {'id': self.run_id, 'name': self.run_name, 'status': 'running', 'error': None, 'created_at': now,
               'updated_at': now, 'heartbeat': now, 'info': json.dumps(self.info),
               'config': json.dumps(self.config, default=str), 'lost_rows': 0,
               'vocab': None if self.class_names is None else json.dumps(self.class_names)}
        self.writer.start_run(run, probe=self._probe)
        print(f'fastwatch: recording run {self.run_id} into {self.writer.location} - watch it: '
              f'fastwatch serve --store {self.writer.location} --run {self.run_id}')

    def _info(self) -> dict:
        learn, dls = self.learn, self.learn.dls
        model = learn.model
        return {
            'host': platform.node(), 'python': platform.python_version(), 'fastai': fastai.__version__,
            'torch': torch.__version__, 'fastwatch': __version__, 'device': str(getattr(dls, 'device', None)),
            'model': type(model).__name__, 'n_params': sum(p.numel() for p in model.parameters()),
            'batch_size': getattr(dls.train, 'bs', None), 'n_train': len(dls.train.dataset),
            'n_valid': len(dls.valid.dataset), 'loss_func': str(learn.loss_func),
            'optimizer': getattr(learn.opt_func, '__name__', str(learn.opt_func)),
            'metric_names': [m.name for m in learn.metrics]}

    def _start_fit(self) -> None:
        self.fit_index += 1
        self.in_fit, self._fit_frame, self._gone_since = True, _caller_frame('fit', self.learn), None
        self._fit_thread, self._last_error = threading.get_ident(), getattr(sys, 'last_value', None)
        self.frozen = getattr(self.learn.opt, 'frozen_idx', 0) > 0
        lr = self.learn.opt.hypers[-1].get('lr')
        self.fits.append({'fit': self.fit_index, 'n_epoch': self.learn.n_epoch, 'lr': _plain(lr),
                          'frozen': self.frozen, 'first_epoch': self.global_epoch})
        planned = self.global_epoch + self.learn.n_epoch
        if self._fine_tune is not None and self._fine_tune_fits == 1:
            planned += self._fine_tune.f_locals.get('epochs', 0)
        self.info.update(fits=self.fits, planned_epochs=planned)
        self.writer.update_run(self.run_id, info=json.dumps(self.info))

    def _record_validation(self, result: dict) -> None:
        top, epoch, run_id, dl = result['top'], self.global_epoch, self.run_id, self.learn.dl
        self.writer.add_rows('confusion', [{'run_id': run_id, 'epoch': epoch, 'n_classes': len(result['matrix']),
                                            'counts': pack_cells(cells_of(result['matrix']))}])
        names = self.class_names if self.class_names and len(self.class_names) == len(result['matrix']) else None
        try: inputs = decoded_inputs(dl, [t['index'] for t in top])
        except Exception: inputs = [None] * len(top)  # items that cannot be reloaded keep their names only
        size, root = self.thumb_size, getattr(self.dls, 'path', None)

        def rows():
            return {'top_losses': [
                {'run_id': run_id, 'epoch': epoch, 'rank': rank, 'item_index': t['index'],
                 'item': item_name(dl, t['index'], root), 'loss': t['loss'], 'probability': t['probability'],
                 'actual': names[t['actual']] if names else str(t['actual']),
                 'predicted': names[t['predicted']] if names else str(t['predicted']),
                 'image': None, 'image_type': None, 'text': None,
                 **(render_input(x, size) if x is not None else {})}
                for rank, (t, x) in enumerate(zip(top, inputs))]}
        self.writer.add_later(rows)

    def _probe(self):
        "Called by the writer thread: did this fit end without after_fit (an exception, Ctrl-C in a notebook)?"
        with self._lock:
            if not self.in_fit: return None
            frame = sys._current_frames().get(self._fit_thread)
            while frame is not None and frame is not self._fit_frame: frame = frame.f_back
            if frame is not None: self._gone_since = None
            elif self._gone_since is None: self._gone_since = time.monotonic()
            # Give the interpreter a moment to show the traceback, which sets sys.last_value.
            if frame is not None or time.monotonic() - self._gone_since < PROBE_GRACE: return None
            return self._abandon()[1:]

    def _end_abandoned_fit(self) -> None:
        with self._lock: outcome = self._abandon() if self.in_fit else None
        if outcome: self.writer.end_run(*outcome)

    def _abandon(self) -> tuple[str, str, str]:
        "Forget the fit that ended without after_fit: its run's id, final status and error."
        run_id, self.in_fit, self.run_id, self._fine_tune = self.run_id, False, None, None
        error = getattr(sys, 'last_value', None)
        # A caller that caught the exception leaves no trace of it; an uncaught one sets sys.last_value.
        return run_id, *exit_outcome(error if error is not self._last_error else None,
                                     unknown=('failed', 'the fit stopped with an exception'))

    def __getstate__(self):
        "`learn.export()` pickles callbacks: leave out the writer, the lock and stack frames."
        runtime = ('writer', '_lock', '_fine_tune', '_fit_frame', 'collector')
        return {k: v for k, v in self.__dict__.items() if k not in runtime}

    def __setstate__(self, state):
        self.__dict__.update(state, writer=None, _lock=threading.Lock(), _fine_tune=None, _fit_frame=None,
                             in_fit=False, run_id=None)
