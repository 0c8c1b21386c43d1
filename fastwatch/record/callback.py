"""`WatchCallback`: records a fastai training run (both fits of `fine_tune` as one run) into a fastwatch store."""
from __future__ import annotations

import os
import platform
import time
import warnings
from collections.abc import Callable
from functools import partial

import fastai
import torch
from fastai.callback.core import Callback
from fastai.imports import noop
from fastai.learner import Recorder
from fastai.torch_core import rank_distrib
from fastcore.foundation import L

from .. import __version__
from ..errors import PublishError
from ..links import DEFAULT_URL, local_url, published_binder_url
from ..remote.protocol import Publisher, check_target
from ..store import RunInfo, RunRecord, hide_password
from ..store.confusion import pack_cells
from ..store.tables import (
    BatchRow,
    ConfusionRow,
    EpochRow,
    ItemEpochRow,
    ItemImageRow,
    ItemsRow,
    TopLossRow,
    confusion,
    epochs,
    item_epochs,
    item_images,
    items,
    top_losses,
)
from .alerts import Alerts, notifiers, notify_urls, parse_alert_on
from .dynamics import SuspectImages, TrainingDynamics
from .items import item_files, item_identities, item_name
from .network import PublishListener
from .recording import Recording, Thumbnails
from .run import RunLifecycle
from .system import SystemSampler
from .thumbnails import file_thumbnail
from .validation import (
    ValidationCollector,
    base_loader,
    decoded_inputs,
    distributed_training_pass,
    reloaded_inputs,
    render_input,
)
from .writer import Writer


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


def logged_metric_names(learn) -> list[str]:
    """The metrics fastai's Recorder logs each epoch, in its order (`train_error_rate` and `valid_error_rate` with
    `train_metrics`), but for the epoch, its time and the losses, which the epochs table has columns for."""
    recorder = getattr(learn, 'recorder', None)
    names = recorder.metric_names if recorder is not None else ['epoch', 'train_loss', 'valid_loss',
                                                                 *(m.name for m in learn.metrics), 'time']
    return [name for name in names if name not in ('epoch', 'time', 'train_loss', 'valid_loss')]


def run_info(learn) -> RunInfo:
    "What a run is trained with and on, as the Learner says."
    dls, model = learn.dls, learn.model
    return RunInfo(
        host=platform.node(), python=platform.python_version(), fastai=fastai.__version__, torch=torch.__version__,
        fastwatch=__version__, device=str(getattr(dls, 'device', None)), model=type(model).__name__,
        n_params=sum(p.numel() for p in model.parameters()), batch_size=getattr(dls.train, 'bs', None),
        n_train=len(dls.train.dataset), n_valid=len(dls.valid.dataset), loss_func=str(learn.loss_func),
        optimizer=getattr(learn.opt_func, '__name__', str(learn.opt_func)),
        metric_names=logged_metric_names(learn))


class WatchCallback(Callback):
    """Record losses, learning rate, metrics, confusion matrices and top losses of every fit to a store.

    `store`: a path or SQLAlchemy URL (default `$FASTWATCH_STORE`, then `./fastwatch.db`); `name`: a run name;
    `config`: any JSON-friendly dict to keep with the run; `top_k`: highest-loss items kept per validation pass;
    `thumb_size`: the longest side of their thumbnails in pixels, at most (smaller images are kept as they are).

    Watch from anywhere: `publish` (default `$FASTWATCH_PUBLISH`): an fsspec URL or folder the run is published to
    every `publish_every` s, at each epoch's end and at the end (`publish_url`: the https URL that serves it, when
    fastwatch cannot tell); `alerts` (default `$FASTWATCH_ALERTS`): apprise notification URLs, told when the run
    finishes, fails or its loss is not finite, and when a metric meets a condition of `alert_on`, such as
    `{'error_rate': '<0.05', 'valid_loss': 'no improvement for 3 epochs'}`.

    `system_every`: sample the process's CPU use and memory (and the GPU's, on CUDA) every so many seconds, from
    the writer's thread (0: never).

    `dynamics`: record every item's loss, probability of its label and prediction each epoch, from the training
    and validation passes themselves (single-label classification), for the data map and the suspects list.

    `show`: in a notebook, the live dashboard appears under the cell that trains, below fastai's progress bar (in a
    script, the line that says how to watch the run is all). It prints nothing in a fit that `learn.no_logging()`
    keeps quiet, as fastai's own table.

    The Learner calls it `learn.watch`: `learn.watch.run_id` is the run being recorded (or the last one)."""
    order = Recorder.order + 1  # after Recorder has smoothed the loss and logged the metrics
    remove_on_fetch = True

    def __init__(self, store=None, name: str | None = None, config: dict | None = None, top_k: int = 16,
                 thumb_size: int = 128, publish: str | None = None, publish_every: float = 30,
                 publish_url: str | None = None, alerts: str | list[str] | None = None, alert_on: dict | None = None,
                 show: bool = False, dynamics: bool = True, system_every: float = 10.0):
        if top_k < 0: raise ValueError(f'WatchCallback: top_k must be 0 or more, not {top_k}')
        if thumb_size < 1: raise ValueError(f'WatchCallback: thumb_size must be at least 1 pixel, not {thumb_size}')
        if not system_every >= 0:
            raise ValueError(f'WatchCallback: system_every takes seconds, 0 for none, not {system_every}')
        if not isinstance(config or {}, dict): raise ValueError(f'WatchCallback: config must be a dict, not {config!r}')
        self.store, self.run_name, self.config = store, name, config or {}
        self.top_k, self.thumb_size = top_k, thumb_size
        self.publish, self.publish_url = publish or os.environ.get('FASTWATCH_PUBLISH') or None, publish_url
        if self.publish:
            try: check_target(self.publish, publish_every)
            except PublishError as e: raise ValueError(f'WatchCallback: {e}') from None
        self.publish_every, self.alert_on, self.show, self.dynamics = publish_every, alert_on, show, dynamics
        self.system_every = system_every
        self.alerts = notify_urls(alerts or os.environ.get('FASTWATCH_ALERTS'))
        parse_alert_on(alert_on), notifiers(self.alerts)  # a bad condition or URL fails here, not during the fit
        self.disabled, self.collectors = False, []
        self.lifecycle = RunLifecycle(end=self._end)  # when runs start and end
        self.recording: Recording | None = None  # the current (or last) run's state

    @property
    def run_id(self) -> str | None:
        "The id of the run being recorded, or of the last one."
        return self.lifecycle.id

    @property
    def writer(self) -> Writer | None:
        "The background writer of the current (or last) run."
        return self.recording.writer if self.recording is not None else None

    def __call__(self, event_name):
        """Run this callback's method for the event, if it has one and fastai's `run` flag is set (as
        `Callback.__call__` does); never let an error in it fail the fit."""
        method = getattr(type(self), event_name, None)  # fastai calls every callback for each of ~10 events a batch
        if method is None: return
        if not self.run:
            if event_name == 'after_fit': self.run = True  # fastai's flag lasts one fit
            return
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
            self._end(self.lifecycle.stop(error))

    def before_fit(self):
        "A fit, or an evaluation (fastai opens one for validate, get_preds and the like): see `RunLifecycle`."
        learn = self.learn
        # One run per training, however many processes distrib_ctx starts: only rank 0 records.
        quiet = hasattr(learn, 'lr_finder') or hasattr(learn, 'gather_preds') or rank_distrib() != 0
        self._end(self.lifecycle.before_fit(learn, quiet))

    def before_train(self):
        begun = self.lifecycle.before_train()
        if begun == 'start': self._start_run()
        if begun: self._start_fit()
        if not self.lifecycle.recording: return
        self.recording.epoch_started, self.recording.epoch_log = time.time(), None
        if self.recording.dynamics is not None: self.recording.dynamics.begin_epoch()

    def after_batch(self):
        learn = self.learn  # the hot path: read the Learner's attributes directly, not through the callback
        if not len(learn.yb): return
        if not learn.training:
            if self.collectors and self.collectors[-1] is not None: self.collectors[-1].add_batch()
            return
        if not self.lifecycle.recording: return
        groups, recording = learn.opt.hypers, self.recording
        hypers, at = groups[-1], recording.position
        with torch._C.DisableTorchFunctionSubclass(): loss = learn.loss.detach()  # fastai's tensors are slower
        lrs = [h.get('lr') for h in groups] if len(groups) > 1 else None
        recording.writer.add_batch(BatchRow(recording.id, at.step, at.epoch, at.fit, at.frozen, loss,
                                            getattr(learn, 'smooth_loss', None), hypers.get('lr'), hypers.get('mom'),
                                            time.time(), lrs))
        at.step += 1
        if recording.dynamics is not None: recording.dynamics.add_batch()

    def after_train(self):
        if self.lifecycle.recording and self.recording.dynamics is not None:
            self.recording.epoch_values['train'] = self.recording.dynamics.values()

    def before_validate(self):
        # Under distrib_ctx every rank collects its share of the pass, and rank 0 records the whole.
        distributed = distributed_training_pass(self.learn)
        # One collector a pass, on a stack: an evaluation run inside this pass (from a callback's after_validate)
        # gets its own entry, None, and its batches never reach this pass's collector.
        collect = self.lifecycle.recording if distributed is None else distributed
        self.collectors.append(ValidationCollector(self.learn, self.top_k, self.dynamics) if collect else None)

    def after_validate(self):
        result = self._pass_result()
        if not self.lifecycle.recording: return
        # The Recorder's log of this epoch, kept now: an evaluation run from a later after_epoch would replace it.
        self.recording.epoch_log = list(self.learn.recorder.log)
        if result is not None:
            self.recording.epoch_values['valid'] = result['values']
            self._record_validation(result)

    def after_epoch(self):
        if not self.lifecycle.recording: return
        recorder, recording = self.learn.recorder, self.recording
        log = recorder.log if recording.epoch_log is None else recording.epoch_log
        values = {name: _plain(value) for name, value in zip(recorder.metric_names, log)}
        for name in ('epoch', 'time'): values.pop(name, None)
        now, at = time.time(), recording.position
        train_loss, valid_loss = values.pop('train_loss', None), values.pop('valid_loss', None)
        recording.writer.add_rows(epochs.name, [EpochRow(
            recording.id, at.epoch, at.fit, at.frozen, at.step - 1, train_loss, valid_loss, values,
            now - recording.epoch_started, now)])
        self._record_item_values()
        at.epoch += 1
        recording.writer.flush(timeout=0)

    def after_fit(self):
        if not self._end(self.lifecycle.after_fit()): return
        self.writer.flush(timeout=10)
        if self.recording.shown is not None: self.recording.shown.catch_up()  # the cell's output ends with the end

    # --- helpers --------------------------------------------------------------------------------------------
    def _end(self, ending) -> bool:
        "End a run in the store as the lifecycle says (nothing for None); True if it did."
        if ending is None or self.writer is None: return False
        self.writer.end_run(*ending)
        return True

    def _start_run(self) -> None:
        learn, run_id = self.learn, self.lifecycle.id
        recording = self.recording = Recording(run_id, Writer.for_store(self.store), run_info(learn),
                                               class_names(learn.dls), Thumbnails(self.thumb_size))
        if self.dynamics: recording.dynamics = TrainingDynamics(learn, self._say)
        writer = recording.writer
        writer.start_run(RunRecord.new(run_id, self.run_name, recording.info_now(), self.config,
                                       recording.class_names, time.time()),
                         probe=partial(self.lifecycle.probe, run_id))
        self.lifecycle.end_at_exit()
        if self.system_every:
            writer.listeners.append(SystemSampler(run_id, writer.add_rows, self.system_every,
                                                  getattr(learn.dls, 'device', None)))
        if not (self.show and self._show_here(run_id)):
            self._say(f'fastwatch: recording run {run_id} into {writer.location} - watch it: '
                      f'fastwatch serve --store {writer.location} --run {run_id}')
        if self.publish or self.alerts: self._watch_from_anywhere(run_id)

    def _say(self, text: str) -> None:
        "Print a line, unless the fit is quiet: `learn.no_logging()` makes fastai's logger `noop`."
        if self.learn.logger is not noop: print(text)

    def _show_here(self, run_id: str) -> bool:
        "Show the run's dashboard under the notebook cell that trains; False outside a notebook."
        from ..view import inline  # widgets and bokeh: only for a fit that shows itself
        if not inline.in_notebook(): return False
        self.recording.shown = inline.show(run_id, self.writer.url)
        return True

    def _watch_from_anywhere(self, run_id: str) -> None:
        "Publish the run and send its alerts, each on a thread of its own; print the links that follow it."
        writer = self.writer
        publisher = Publisher(writer.url, run_id, self.publish, self.publish_every, self.publish_url) \
            if self.publish else None
        if publisher is not None:
            self._say(f'fastwatch: publishing run {run_id} to {publisher.target.rstrip("/")}/{run_id}/ every '
                      f'{publisher.every:g} s - follow it live:\n' + (publisher.links or
                      f'  serve that folder over https, then open the dashboard with ?store=https://…/{run_id}/'))
        alerts = ()
        if self.alerts:
            link = (published_binder_url(publisher.url, run_id) if publisher is not None and publisher.url
                    else f'{local_url(DEFAULT_URL, run_id)} (fastwatch serve --store {writer.location})')
            alerts = (Alerts(run_id, self.run_name, link, self.alerts, parse_alert_on(self.alert_on),
                             add_rows=writer.add_rows),)
            writer.listeners.extend(alerts)
        if publisher is not None: writer.listeners.append(PublishListener(publisher, after=alerts))

    def _pass_result(self) -> dict | None:
        "End the innermost validation pass: its collector's result (a collective under distrib_ctx, on every rank)."
        collector = self.collectors.pop() if self.collectors else None
        return collector.result() if collector is not None else None

    def _start_fit(self) -> None:
        self.collectors.clear()  # passes that an exception cut short
        learn, recording = self.learn, self.recording
        recording.start_fit(learn.n_epoch, _plain(learn.opt.hypers[-1].get('lr')), logged_metric_names(learn),
                            frozen=getattr(learn.opt, 'frozen_idx', 0) > 0,
                            planned_epochs=recording.position.epoch + learn.n_epoch
                            + self.lifecycle.fine_tune_epochs())

    def _record_validation(self, result: dict) -> None:
        recording, dl = self.recording, result['loader']
        top, epoch, run_id, n = result['top'], recording.position.epoch, recording.id, result['n_classes']
        recording.writer.add_rows(confusion.name, [ConfusionRow(run_id, epoch, n, pack_cells(result['cells']))])
        names = recording.class_names if recording.class_names and len(recording.class_names) == n else None
        # Decoding inputs costs the training thread most of this pass's recording: an item already shown in an
        # earlier epoch of the run (the validation transforms give it the same input) is not decoded again.
        thumbnails, indices = recording.thumbnails, [t['index'] for t in top]
        missing = thumbnails.missing(indices)
        try: inputs = decoded_inputs(dl, [t for t in top if t['index'] in missing]) if missing else {}
        except Exception: inputs = {}  # items that cannot be decoded keep their names only
        forgotten = thumbnails.shown([i for i in indices if i not in missing or i in inputs])
        root = getattr(self.learn.dls, 'path', None)
        label = lambda c: names[c] if names else str(c)

        def rows():
            thumbnails.render(inputs, forgotten)
            return {top_losses.name: [TopLossRow(
                run_id=run_id, epoch=epoch, rank=rank, item_index=t['index'], item=item_name(dl, t['index'], root),
                actual=label(t['actual']), predicted=label(t['predicted']), probability=t['probability'],
                loss=t['loss'], **{'image': None, 'image_type': None, 'text': None, **thumbnails.of(t['index'])})
                for rank, t in enumerate(top)]}
        recording.writer.add_later(rows)

    def _record_item_values(self) -> None:
        """The epoch's values of each split's items, thumbnails of its new top suspects, and the first time a split
        has values, the identity of its items."""
        recording, dls = self.recording, self.learn.dls
        found = {split: values for split, values in recording.epoch_values.items() if values is not None}
        recording.epoch_values = {}
        new = [split for split in found if split not in recording.named_splits]
        recording.named_splits.update(new)
        if not found: return
        run_id, epoch, root = recording.id, recording.position.epoch, getattr(dls, 'path', None)
        loaders = {'train': dls.train, 'valid': base_loader(dls.valid)}
        suspects = {split: recording.suspects.setdefault(split, SuspectImages()).new_suspects(values)
                    for split, values in found.items()}
        images = {split: self._suspect_images(loaders[split], indices) for split, indices in suspects.items()}

        def rows():  # in the writer's thread: packing, rendering and naming every item cost the training thread nothing
            made = {item_epochs.name: [ItemEpochRow(run_id, epoch, split, len(values), values.pack())
                                       for split, values in found.items()],
                    item_images.name: [ItemImageRow(run_id, split, index, epoch, **{
                        'image': None, 'image_type': None, 'text': None, **render()})
                        for split, shown in images.items() for index, render in shown.items()]}
            if new: made[items.name] = [ItemsRow(run_id, split, epoch, *item_identities(loaders[split], root))
                                        for split in new]
            return made
        recording.writer.add_later(rows)

    def _suspect_images(self, dl, indices: list[int]) -> dict[int, Callable[[], dict]]:
        """Item index -> what renders its thumbnail columns in the writer's thread: an image file's, from the file as
        it is on disk (what a cleanup moves); else its input reloaded through the loader, as `show_batch` has it
        (tabular rows, texts). None for items that cannot be decoded: their names suffice."""
        if not indices: return {}
        size, files = self.thumb_size, item_files(dl, indices)
        if files is not None: return {index: partial(file_thumbnail, path, size) for index, path in files.items()}
        try: return {index: partial(render_input, value, size)
                     for index, value in zip(indices, reloaded_inputs(dl, indices))}
        except Exception: return {}

    def __getstate__(self):
        "`learn.export()` pickles callbacks: leave out the run being recorded and its lifecycle (a lock, frames)."
        return {k: v for k, v in self.__dict__.items() if k not in ('lifecycle', 'collectors', 'recording')}

    def __setstate__(self, state):
        self.__dict__.update(state, lifecycle=RunLifecycle(end=self._end), collectors=[], recording=None)
