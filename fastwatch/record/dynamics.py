"""Each item's values every epoch, from the passes training makes anyway (`store/dynamics.py` says what they mean).

Training items are seen in the training batches themselves: `learn.pred` and `learn.yb` with the loss function's
reduction set to none. fastai's `DataLoader` keeps the order it drew the epoch's items in, so the i-th item of the
epoch's batches is dataset index `order[i]`. Batches are held until they add up to `PENDING_VALUES` scores, then
reduced together and scattered into per-item tensors on the model's device: nothing is read back until the epoch
ends, so no batch waits on the device. Validation items come from the validation collector (`validation.py`),
which reduces its batches the same way (`per_item`).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from fastai.callback.mixup import MixHandler
from fastai.distributed import DistributedDL
from fastai.learner import Learner

from ..store.dynamics import UNSEEN, ItemValues, recent_margin

PENDING_VALUES = 1 << 22  # scores (items x classes) held before they are reduced to per-item values
SUSPECT_IMAGES = 16  # the top suspects of each split that get a thumbnail: the data panel's first page


class PerItem(NamedTuple):
    """A chunk of single-label classification items: the loss (unreduced), the class predicted and its probability,
    the label, whether it is a class of the vocabulary (not the loss's ignore_index), the probability of the label,
    and the margin (that probability minus the highest other class's)."""
    loss: torch.Tensor
    decoded: torch.Tensor
    probability: torch.Tensor
    classes: torch.Tensor
    labelled: torch.Tensor
    label_prob: torch.Tensor
    margin: torch.Tensor


def class_targets(pred: torch.Tensor, targ: torch.Tensor) -> torch.Tensor | None:
    """The class of each item for single-label classification (one score per class, one integer class per item,
    as `(bs,)` or tabular's `(bs, 1)`), else None."""
    if targ.ndim == 2 and targ.shape[1] == 1: targ = targ[:, 0]
    single = (pred.ndim == 2 and targ.ndim == 1 and len(pred) == len(targ)
              and not targ.is_floating_point() and not targ.is_complex())
    return targ if single else None


def per_item(learn: Learner, pred: torch.Tensor, targ: torch.Tensor) -> PerItem | None:
    """Per-item values of predictions and targets as the loss function sees them (the loss with its reduction set
    to none, as `ClassificationInterpretation` computes it); None unless single-label classification. Call it with
    tensor subclasses disabled."""
    classes = class_targets(pred, targ)
    if classes is None: return None
    loss_func = learn.loss_func
    with torch.no_grad():
        with learn.loss_not_reduced(): losses = loss_func(pred, targ)
        probs = loss_func.activation(pred) if hasattr(loss_func, 'activation') else pred.softmax(-1)
        decoded = loss_func.decodes(probs) if hasattr(loss_func, 'decodes') else probs.argmax(-1)
        if losses.shape != classes.shape or decoded.shape != classes.shape or probs.shape != pred.shape: return None
        probs, classes, decoded = probs.float(), classes.long(), decoded.long()
        labelled = (classes >= 0) & (classes < probs.shape[1])
        at = classes.clamp(0, probs.shape[1] - 1)[:, None]
        label_prob = probs.gather(1, at)[:, 0]
        others = probs.scatter(1, at, -math.inf).max(1).values if probs.shape[1] > 1 else torch.zeros_like(label_prob)
        return PerItem(losses.detach().float(), decoded, probs.gather(1, decoded[:, None])[:, 0], classes, labelled,
                       label_prob, label_prob - others)


class EpochItems:
    "Per-item tensors of one split's epoch on the model's device, filled chunk by chunk, read once (`values`)."

    def __init__(self, n: int, device):
        self.loss, self.label_prob, self.margin = (torch.full((n,), math.nan, device=device) for _ in range(3))
        self.predicted, self.label = (torch.full((n,), UNSEEN, dtype=torch.int32, device=device) for _ in range(2))

    def put(self, at: torch.Tensor, items: PerItem) -> None:
        """The values of the items at dataset indices `at` (items without a class of the vocabulary stay unseen).
        Written through `torch.where`, not a boolean mask: a mask's size would make the host wait for the device."""
        labelled, nan = items.labelled, torch.tensor(math.nan, device=at.device)
        unseen = torch.tensor(UNSEEN, dtype=torch.int32, device=at.device)
        self.loss[at], self.label_prob[at], self.margin[at] = (
            torch.where(labelled, value, nan) for value in (items.loss, items.label_prob, items.margin))
        self.predicted[at], self.label[at] = (
            torch.where(labelled, value.int(), unseen) for value in (items.decoded, items.classes))

    def values(self) -> ItemValues:
        "Everything, read from the device at once."
        return ItemValues(*(t.cpu().numpy() for t in (self.loss, self.label_prob, self.margin, self.predicted,
                                                       self.label)))


class TrainingDynamics:
    """The training items' values of each epoch, from its training batches: `begin_epoch` as its training begins,
    `add_batch` after each batch, `values` once its training ends (an epoch cancelled mid-way has none). Off
    (saying why, once, through `say`) when the training targets are not single labels (MixUp and CutMix mix them,
    multi-label, regression) or the epoch's order is not known."""

    def __init__(self, learn: Learner, say: Callable[[str], None]):
        self.learn, self.say, self.off = learn, say, False
        self.begin_epoch()

    def begin_epoch(self) -> None:
        "Start an epoch afresh: whatever an epoch cancelled before its end held is dropped."
        self.pending, self.pending_values, self.position = [], 0, 0
        self.order: torch.Tensor | None = None
        self.items: EpochItems | None = None

    def _stop(self, why: str) -> None:
        self.off = True
        self.begin_epoch()
        self.say(f'fastwatch: no per-item training dynamics for this run: {why}')

    def _start_epoch(self, pred: torch.Tensor) -> bool:
        learn = self.learn
        if any(isinstance(cb, MixHandler) for cb in learn.cbs):
            self._stop('MixUp or CutMix mixes its training targets')
        elif isinstance(learn.dl, DistributedDL):
            self._stop('under distrib_ctx each process sees a share of the batches')
        else:
            order = getattr(learn.dl, '_DataLoader__idxs', None)  # the epoch's order, kept by DataLoader.__iter__
            try: self.order = torch.as_tensor(np.asarray(order, dtype=np.int64), device=pred.device)
            except (TypeError, ValueError): self._stop('its training loader does not keep the order of its items')
        return not self.off

    def add_batch(self) -> None:
        "Hold this training batch's predictions and targets, with the dataset indices of its items."
        if self.off: return
        learn = self.learn
        with torch._C.DisableTorchFunctionSubclass():  # fastai's tensor subclasses make small operations slower
            pred, targ = learn.pred, learn.yb[0]
            if self.order is None and not self._start_epoch(pred): return
            n = len(pred)
            self.pending.append((pred.detach(), targ.detach(), self.order[self.position:self.position + n]))
            self.position += n
            self.pending_values += pred.numel()
            if self.pending_values >= PENDING_VALUES: self._reduce()

    def _reduce(self) -> None:
        if not self.pending: return
        preds, targs, ats = zip(*self.pending)
        self.pending, self.pending_values = [], 0
        pred, at = torch.cat(preds), torch.cat(ats)
        items = per_item(self.learn, pred, torch.cat(targs)) if len(at) == len(pred) else None
        if items is None:
            return self._stop('its training targets are not single labels (multi-label, regression, mixed), or '
                              'its batches hold other items than its order says')
        if self.items is None: self.items = EpochItems(len(self.order), pred.device)
        self.items.put(at, items)

    def values(self) -> ItemValues | None:
        "The epoch's values (None when off or nothing was trained), and a fresh start for the next epoch."
        if self.off: return None
        with torch._C.DisableTorchFunctionSubclass():
            self._reduce()
            found = self.items.values() if self.items is not None and not self.off else None
        self.begin_epoch()
        return found



class SuspectImages:
    """Which of a split's items are its top suspects so far (as `store.dynamics.DataMap.suspects` ranks them, by
    `recent_margin`), and which of those already have a thumbnail. Training thread."""

    def __init__(self):
        self.score: np.ndarray | None = None
        self.imaged: set[int] = set()

    def new_suspects(self, values: ItemValues) -> list[int]:
        "Add an epoch's values; returns the dataset indices of top suspects that have no thumbnail yet."
        self.score = recent_margin(self.score, values)
        score = np.nan_to_num(self.score, nan=np.inf)
        top = np.argsort(score, kind='stable')[:SUSPECT_IMAGES]
        new = [i for i in top[np.isfinite(score[top])].tolist() if i not in self.imaged]
        self.imaged.update(new)
        return new
