"""`WatchCallback`: records a fastai training run (both fits of `fine_tune` as one run) into a fastwatch store."""
from __future__ import annotations

import json
import os
import platform
import time
import warnings
from dataclasses import dataclass
from functools import partial

import fastai
import torch
from fastai.callback.core import Callback
from fastai.learner import Recorder
from fastai.torch_core import rank_distrib
from fastcore.foundation import L

from .. import __version__
from ..errors import UsageError
from ..share.links import DEFAULT_URL, local_url, published_binder_url
from ..share.publish import Publisher, check_target
from ..store import hide_password
from ..store.confusion import pack_cells
from .alerts import Alerts, notifiers, notify_urls, parse_alert_on
from .run import RunLifecycle
from .validation import (
    ValidationCollector,
    base_loader,
    decoded_inputs,
    distributed_training_pass,
    item_name,
    render_input,
)
from .writer import Writer

MAX_RENDERED = 1024  # thumbnails of a run's top-loss items kept for its later epochs


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


@dataclass(slots=True)
class Position:
    """Where the recorded run is: batches trained (`step`), epochs across its fits, which fit, whether frozen.
    Not attributes of the callback: fastai checks each attribute a callback sets against the Learner's (12 us)."""
    step: int = 0
    epoch: int = 0
    fit: int = -1
    frozen: bool = False


class WatchCallback(Callback):
    """Record losses, learning rate, metrics, confusion matrices and top losses of every fit to a store.

    `store`: a path or SQLAlchemy URL (default `$FASTWATCH_STORE`, then `./fastwatch.db`); `name`: a run name;
    `config`: any JSON-friendly dict to keep with the run; `top_k`: highest-loss items kept per validation pass;
    `thumb_size`: the longest side of their thumbnails in pixels, at most (smaller images are kept as they are).

    Watch from anywhere: `publish` (default `$FASTWATCH_PUBLISH`): an fsspec URL or folder the run is published to
    every `publish_every` s, at each epoch's end and at the end (`publish_url`: the https URL that serves it, when
    fastwatch cannot tell); `alerts` (default `$FASTWATCH_ALERTS`): apprise notification URLs, told when the run
    finishes, fails or its loss is not finite, and when a metric meets a condition of `alert_on`, such as
    `{'error_rate': '<0.05', 'valid_loss': 'no improvement for 3 epochs'}`."""
    order = Recorder.order + 1  # after Recorder has smoothed the loss and logged the metrics
    remove_on_fetch = True

    def __init__(self, store=None, name: str | None = None, config: dict | None = None, top_k: int = 16,
                 thumb_size: int = 128, publish: str | None = None, publish_every: float = 30,
                 publish_url: str | None = None, alerts: str | list[str] | None = None, alert_on: dict | None = None):
        if top_k < 0: raise ValueError(f'WatchCallback: top_k must be 0 or more, not {top_k}')
        if thumb_size < 1: raise ValueError(f'WatchCallback: thumb_size must be at least 1 pixel, not {thumb_size}')
        if not isinstance(config or {}, dict): raise ValueError(f'WatchCallback: config must be a dict, not {config!r}')
        self.store, self.run_name, self.config = store, name, config or {}
        self.top_k, self.thumb_size = top_k, thumb_size
        self.publish, self.publish_url = publish or os.environ.get('FASTWATCH_PUBLISH') or None, publish_url
        if self.publish:
            try: check_target(self.publish, publish_every)
            except UsageError as e: raise ValueError(f'WatchCallback: {e}') from None
        self.publish_every, self.alert_on = publish_every, alert_on
        self.alerts = notify_urls(alerts or os.environ.get('FASTWATCH_ALERTS'))
        parse_alert_on(alert_on), notifiers(self.alerts)  # a bad condition or URL fails here, not during the fit
        self.writer, self.disabled, self.collectors = None, False, []
        self.run = RunLifecycle(end=self._end)

    @property
    def run_id(self) -> str | None:
        "The id of the run being recorded, or of the last one."
        return self.run.id

    def __call__(self, event_name):
        "Run this callback's method for the event, if it has one; never let an error in it fail the fit."
        method = getattr(type(self), event_name, None)  # fastai calls every callback for each of ~10 events a batch
        if method is None: return
        if self.disabled:
            # Under distrib_ctx the other ranks wait for this one's share of each validation pass: still give it.
            if event_name == 'after_validate' and self.collectors: self._pass_result()
            return
        try: return method(self)
        except Exception as e:
            self.disabled, error = True, ' '.join(f'{type(e).__name__}: {e}'.split())[:500]
            if self.writer is not None: error = hide_password(error, self.writer.url)
            warnings.warn(f'fastwatch: recording stopped after an error in {event_name}: {error}. Training goes on.',
                          RuntimeWarning)
            self._end(self.run.stop(error))

    def before_fit(self):
        "A fit, or an evaluation (fastai opens one for validate, get_preds and the like): see `RunLifecycle`."
        learn = self.learn
        # One run per training, however many processes distrib_ctx starts: only rank 0 records.
        quiet = hasattr(learn, 'lr_finder') or hasattr(learn, 'gather_preds') or rank_distrib() != 0
        self._end(self.run.before_fit(learn, quiet))

    def before_train(self):
        begun = self.run.before_train()
        if begun == 'start': self._start_run()
        if begun: self._start_fit()
        self.epoch_start, self.epoch_log = time.time(), None

    def after_batch(self):
        learn = self.learn  # the hot path: read the Learner's attributes directly, not through the callback
        if not len(learn.yb): return
        if not learn.training:
            if self.collectors and self.collectors[-1] is not None: self.collectors[-1].add_batch()
            return
        if not self.run.recording: return
        groups, at = learn.opt.hypers, self.position
        hypers = groups[-1]
        with torch._C.DisableTorchFunctionSubclass(): loss = learn.loss.detach()  # 7x faster on fastai's tensors
        self.writer.add_batch((self.run.id, at.step, at.epoch, at.fit, at.frozen, loss,
                               getattr(learn, 'smooth_loss', None), hypers.get('lr'), hypers.get('mom'), time.time(),
                               [h.get('lr') for h in groups] if len(groups) > 1 else None))
        at.step += 1

    def before_validate(self):
        # Under distrib_ctx every rank collects its share of the pass, and rank 0 records the whole.
        distributed = distributed_training_pass(self.learn)
        # One collector a pass, on a stack: an evaluation run inside this pass (from a callback's after_validate)
        # gets its own entry, None, and its batches never reach this pass's collector.
        collect = self.run.recording if distributed is None else distributed
        self.collectors.append(ValidationCollector(self.learn, self.top_k) if collect else None)

    def after_validate(self):
        result = self._pass_result()
        if not self.run.recording: return
        # The Recorder's log of this epoch, kept now: an evaluation run from a later after_epoch would replace it.
        self.epoch_log = list(self.learn.recorder.log)
        if result is not None: self._record_validation(result)

    def after_epoch(self):
        if not self.run.recording: return
        recorder = self.learn.recorder
        log = recorder.log if self.epoch_log is None else self.epoch_log
        values = {name: _plain(value) for name, value in zip(recorder.metric_names, log)}
        for name in ('epoch', 'time'): values.pop(name, None)
        now, at = time.time(), self.position
        self.writer.add_rows('epochs', [{
            'run_id': self.run.id, 'epoch': at.epoch, 'fit': at.fit, 'frozen': at.frozen,
            'step': at.step - 1, 'train_loss': values.pop('train_loss', None),
            'valid_loss': values.pop('valid_loss', None), 'metrics': json.dumps(values),
            'duration': now - self.epoch_start, 'time': now}])
        at.epoch += 1
        self.writer.flush(timeout=0)

    def after_fit(self):
        if self._end(self.run.after_fit()): self.writer.flush(timeout=10)

    # --- helpers --------------------------------------------------------------------------------------------
    def _end(self, ending) -> bool:
        "End a run in the store as the lifecycle says (nothing for None); True if it did."
        if ending is None or self.writer is None: return False
        self.writer.end_run(*ending)
        return True

    def _start_run(self) -> None:
        self.writer = Writer.for_store(self.store)
        run_id = self.run.id
        self.position = Position()
        self.fits, self.info = [], self._info()
        self.rendered = {}  # item index -> its thumbnail or text, made in the writer thread, for this run's epochs
        now = time.time()
        self.class_names = class_names(self.learn.dls)
        run = {'id': run_id, 'name': self.run_name, 'status': 'running', 'error': None, 'created_at': now,
               'updated_at': now, 'heartbeat': now, 'info': json.dumps(self.info),
               'config': json.dumps(self.config, default=str), 'lost_rows': 0,
               'vocab': None if self.class_names is None else json.dumps(self.class_names)}
        self.writer.start_run(run, probe=partial(self.run.probe, run_id))
        self.run.end_at_exit()
        print(f'fastwatch: recording run {run_id} into {self.writer.location} - watch it: '
              f'fastwatch serve --store {self.writer.location} --run {run_id}')
        if self.publish or self.alerts: self._watch_from_anywhere(run_id)

    def _watch_from_anywhere(self, run_id: str) -> None:
        "Publish the run and send its alerts from the writer thread (its hooks); print the links that follow it."
        publisher = Publisher(self.writer.url, run_id, self.publish, self.publish_every, self.publish_url) \
            if self.publish else None
        if publisher is not None:
            print(f'fastwatch: publishing run {run_id} to {publisher.target.rstrip("/")}/{run_id}/ every '
                  f'{publisher.every:g} s - follow it live:\n' + (publisher.links or
                  f'  serve that folder over https, then open the dashboard with ?store=https://…/{run_id}/'))
        if self.alerts:
            link = (published_binder_url(publisher.url, run_id) if publisher is not None and publisher.url
                    else f'{local_url(DEFAULT_URL, run_id)} (fastwatch serve --store {self.writer.location})')
            self.writer.hooks.append(Alerts(run_id, self.run_name, link, self.alerts, parse_alert_on(self.alert_on)))
        if publisher is not None: self.writer.hooks.append(publisher)

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

    def _pass_result(self) -> dict | None:
        "End the innermost validation pass: its collector's result (a collective under distrib_ctx, on every rank)."
        collector = self.collectors.pop() if self.collectors else None
        return collector.result() if collector is not None else None

    def _start_fit(self) -> None:
        self.collectors.clear()  # passes that an exception cut short
        at = self.position
        at.fit += 1
        at.frozen = getattr(self.learn.opt, 'frozen_idx', 0) > 0
        self.fits.append({'fit': at.fit, 'n_epoch': self.learn.n_epoch,
                          'lr': _plain(self.learn.opt.hypers[-1].get('lr')),
                          'frozen': at.frozen, 'first_epoch': at.epoch})
        self.info.update(fits=self.fits, planned_epochs=at.epoch + self.learn.n_epoch
                         + self.run.fine_tune_epochs())
        self.writer.update_run(self.run.id, info=json.dumps(self.info))

    def _record_validation(self, result: dict) -> None:
        top, epoch, run_id, dl = result['top'], self.position.epoch, self.run.id, base_loader(self.learn.dl)
        n = result['n_classes']
        self.writer.add_rows('confusion', [{'run_id': run_id, 'epoch': epoch, 'n_classes': n,
                                            'counts': pack_cells(result['cells'])}])
        names = self.class_names if self.class_names and len(self.class_names) == n else None
        # Decoding inputs costs the training thread most of this pass's recording: an item already shown in an
        # earlier epoch of the run (the validation transforms give it the same input) is not decoded again.
        rendered, missing = self.rendered, [t for t in top if t['index'] not in self.rendered]
        try: inputs = decoded_inputs(dl, missing) if missing else {}
        except Exception: inputs = {}  # items that cannot be decoded keep their names only
        size, root = self.thumb_size, getattr(self.dls, 'path', None)

        def rows():
            for index, x in inputs.items(): rendered[index] = render_input(x, size)
            for t in top:  # the items shown now become the newest, and the least recently shown go first
                if t['index'] in rendered: rendered[t['index']] = rendered.pop(t['index'])
            while len(rendered) > max(MAX_RENDERED, len(top)): del rendered[next(iter(rendered))]
            return {'top_losses': [
                {'run_id': run_id, 'epoch': epoch, 'rank': rank, 'item_index': t['index'],
                 'item': item_name(dl, t['index'], root), 'loss': t['loss'], 'probability': t['probability'],
                 'actual': names[t['actual']] if names else str(t['actual']),
                 'predicted': names[t['predicted']] if names else str(t['predicted']),
                 'image': None, 'image_type': None, 'text': None, **rendered.get(t['index'], {})}
                for rank, t in enumerate(top)]}
        self.writer.add_later(rows)

    def __getstate__(self):
        "`learn.export()` pickles callbacks: leave out the writer, the run's lifecycle (a lock, stack frames)."
        return {k: v for k, v in self.__dict__.items() if k not in ('writer', 'run', 'collectors', 'rendered')}

    def __setstate__(self, state):
        self.__dict__.update(state, writer=None, run=RunLifecycle(end=self._end), collectors=[])
