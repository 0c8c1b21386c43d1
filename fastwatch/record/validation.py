"""The confusion matrix and the highest-loss items of a validation pass, gathered from fastai's own pass.

Each batch hands over what `learn.pred` and `learn.yb` already hold: no extra forward pass. Predictions are held
until they add up to `PENDING_VALUES` scores (or the pass ends), then reduced together to per-item values (loss
with the loss function's reduction set to none, as `ClassificationInterpretation` computes it, predicted class,
its probability, target): a few tensor operations a chunk rather than a dozen a batch. Everything stays on the
model's device until the pass ends, so no batch adds a device synchronisation and nothing grows with the square
of the number of classes: the confusion matrix is counted once, at the end, as the non-zero cells of its
(actual, predicted) pairs.

Positions in the pass are mapped back to dataset indices (a text classifier's `SortedDL` reorders its items),
and under `distrib_ctx` every rank collects its share and rank 0 merges them without `DistributedDL`'s padding.
"""
from __future__ import annotations

import math
import sys

import numpy as np
import torch
from fastai.distributed import DistributedDL
from fastai.learner import Learner
from fastai.torch_core import TensorImageBase, to_device

from ..store.dynamics import ItemValues
from .dynamics import PENDING_VALUES, EpochItems, PerItem, class_targets, per_item
from .items import MAX_TEXT
from .thumbnails import thumbnail_png, to_pixels


def base_loader(dl):
    "The loader whose items a pass's dataset indices name: the one `DistributedDL` wraps, or `dl` itself."
    return dl.dl if isinstance(dl, DistributedDL) else dl


def distributed_training_pass(learn: Learner) -> bool | None:
    """Under `distrib_ctx`, whether this validation pass is a training fit's, decided alike on every rank (each then
    collects its share: a rank that skipped the collective would hang the others); None outside `distrib_ctx`."""
    if not isinstance(learn.dl, DistributedDL): return None
    # fastai's evaluations (validate, get_preds) restart the iteration count: only a training fit's pass follows steps.
    return getattr(learn, 'train_iter', 0) > 0 and not hasattr(learn, 'gather_preds')


def pass_order(dl, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The dataset index of each of the pass's first `count` items, and whether each is a real item rather than
    `DistributedDL`'s padding (it repeats items so that every rank gets as many)."""
    positions = np.arange(count)
    # fastai's DataLoader.__iter__ keeps the order it drew this pass's items in (SortedDL's, or a rank's share).
    order = getattr(dl, '_DataLoader__idxs', None)
    try: indices = np.asarray(order[:count], dtype=np.int64) if len(order) >= count else positions
    except (TypeError, ValueError): indices = positions  # no order kept, or an iterable dataset's
    if not isinstance(dl, DistributedDL): return indices, np.ones(count, dtype=bool)
    start = dl.rank * dl.n_padded // dl.world_size
    return indices, start + positions < dl.n


def _gather(local):
    "Every rank's `local` on every rank (a collective: each rank calls it once per pass)."
    gathered = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, local)
    return gathered


def merge_cells(cells: np.ndarray) -> np.ndarray:
    "(actual, predicted, count) rows with repeated cells added up, sorted by actual then predicted."
    if not len(cells): return cells.reshape(0, 3)
    pairs, inverse = np.unique(cells[:, :2], axis=0, return_inverse=True)
    return np.column_stack([pairs, np.bincount(inverse.ravel(), weights=cells[:, 2]).astype(np.int64)])


class ValidationCollector:
    """Accumulates one validation pass: call `add_batch` after each batch, `result` after the pass.

    Inputs that are images (one input tensor of two or more dimensions an item) are kept for the pass's k
    highest-loss items as the pass goes, so that their thumbnails need no second trip through the data pipeline;
    other inputs (text, tabular rows) are reloaded for the items shown."""

    def __init__(self, learn: Learner, k: int, values: bool = True):
        "`k`: the highest-loss items kept; `values`: also every item's values (`ItemValues`)."
        self.learn, self.k, self.values = learn, k, values
        self.dl = learn.dl  # this pass's: an evaluation run from a callback before the pass ends changes `learn.dl`
        self.classification, self.n_classes = True, None
        self.pending, self.pending_values = [], 0  # (pred, targ, images) of batches not reduced yet, their values
        self.reduced = 0  # items reduced so far: the pass position of the first pending one
        self.items: list[PerItem] = []  # the pass's items, chunk by chunk
        self.top_images = None  # (score, pass position, input image) of the k highest-loss images so far

    def add_batch(self) -> None:
        if not self.classification or not len(self.learn.yb): return
        xb = self.learn.xb
        # As plain tensors: fastai's tensor subclasses make every small operation several times slower.
        with torch._C.DisableTorchFunctionSubclass():
            pred, targ = self.learn.pred, self.learn.yb[0]
            if not (isinstance(pred, torch.Tensor) and isinstance(targ, torch.Tensor)) \
                    or class_targets(pred, targ) is None or self.n_classes not in (None, pred.shape[1]):
                self.classification = False
                return
            self.n_classes, pred, targ = pred.shape[1], pred.detach(), targ.detach()
            # fastai's CastToTensor has made the inputs plain tensors: decode_batch gives them their types back.
            images = xb[0] if self.k and len(xb) == 1 and isinstance(xb[0], torch.Tensor) and xb[0].ndim >= 3 \
                and len(xb[0]) == len(pred) else None
            self.pending.append((pred, targ, images))
            self.pending_values += pred.numel() + (0 if images is None else images.numel())
            if self.pending_values >= PENDING_VALUES: self._reduce_pending()

    def _reduce_pending(self) -> None:
        "The per-item values of the batches held so far (called with tensor subclasses disabled)."
        if not self.pending: return
        preds, targs, images = zip(*self.pending)
        self.pending, self.pending_values = [], 0
        items = per_item(self.learn, torch.cat(preds), torch.cat(targs))
        if items is None:
            self.classification = False
            return
        if all(i is not None for i in images) and len({i.shape[1:] for i in images}) == 1:  # else reloaded
            self._keep_images(items.loss, items.classes, torch.cat(images))
        self.items.append(items)
        self.reduced += len(items.classes)

    def _keep_images(self, losses: torch.Tensor, classes: torch.Tensor, images: torch.Tensor) -> None:
        "Keep the images of the k highest-loss items so far (NaN first, as `topk`; ignored targets never)."
        score = torch.where((classes >= 0) & (classes < self.n_classes), losses.nan_to_num(nan=math.inf), -math.inf)
        top = score.topk(min(self.k, len(score)))
        score, positions, images = top.values, top.indices + self.reduced, images[top.indices]
        if self.top_images is not None:
            score, positions, images = (torch.cat(pair) for pair in zip(self.top_images, (score, positions, images)))
            best = score.topk(min(self.k, len(score))).indices
            score, positions, images = score[best], positions[best], images[best]
        self.top_images = score, positions, images

    def _images_at(self, at: torch.Tensor) -> list:
        "The kept input image (on the CPU) of each item at pass positions `at`, or None where none was kept."
        if self.top_images is None: return [None] * len(at)
        _, positions, images = self.top_images
        match = positions[None, :] == at[:, None]
        found, where = match.any(1).tolist(), match.int().argmax(1).tolist()
        return [images[i].cpu() if is_kept else None for is_kept, i in zip(found, where)]

    def _local(self) -> dict | None:
        "This process's share: the confusion cells and top-k of its items, without padding and ignored targets."
        if self.classification:
            with torch._C.DisableTorchFunctionSubclass(): self._reduce_pending()
        if not self.classification or self.n_classes is None: return None
        with torch._C.DisableTorchFunctionSubclass():
            n, chunks = self.n_classes, PerItem(*(torch.cat(column) for column in zip(*self.items)))
            targets, decoded = chunks.classes, chunks.decoded
            indices, real = pass_order(self.dl, len(targets))
            # Targets outside the vocabulary (-100, the loss's ignore_index) are left out, as the loss leaves them out.
            keep = torch.as_tensor(real, device=targets.device) & chunks.labelled
            pairs, counts = torch.unique(targets[keep] * n + decoded[keep], return_counts=True)
            pairs, counts = pairs.cpu().numpy(), counts.cpu().numpy()
            kept = keep.nonzero()[:, 0]
            top_loss, top = chunks.loss[kept].topk(min(self.k, len(kept)))
            at = kept[top]
            columns = {'loss': top_loss, 'actual': targets[at], 'predicted': decoded[at],
                       'probability': chunks.probability[at]}
            columns = {name: values.cpu().numpy() for name, values in columns.items()}
            images = self._images_at(at)
            whole = self.values and not isinstance(self.dl, DistributedDL)
            values = self._values(chunks, indices) if whole else None
        return {'n_classes': n, 'cells': np.column_stack([pairs // n, pairs % n, counts]).astype(np.int64),
                'top': {'index': indices[at.cpu().numpy()], **columns}, 'images': images, 'values': values}

    def _values(self, chunks: PerItem, indices: np.ndarray) -> ItemValues:
        "Every item's values in this pass, by dataset index."
        items = EpochItems(len(base_loader(self.dl).dataset), chunks.loss.device)
        items.put(torch.as_tensor(indices, device=chunks.loss.device), chunks)
        return items.values()

    def result(self) -> dict | None:
        """`{'n_classes', 'cells': (k, 3) (actual, predicted, count), 'top': [{'index', 'loss', 'actual', 'predicted',
        'probability', 'input_image'}], 'values', 'loader'}` with dataset indices of `loader`, highest loss first
        (`input_image`: the input the pass saw, when kept, else None; `values`: every item's `ItemValues`, when asked
        for and not under `distrib_ctx`); None when the pass is not single-label classification, and on every rank
        but 0 under `distrib_ctx`."""
        if not isinstance(self.dl, DistributedDL): return self._merge([self._local()])
        try: local = self._local()
        except Exception:
            _gather(None)  # still join the collective: the other ranks would wait for this one forever
            raise
        shares = _gather(local)
        return self._merge(shares) if torch.distributed.get_rank() == 0 else None

    def _merge(self, shares: list[dict | None]) -> dict | None:
        "The whole pass from every process's share."
        if any(s is None or s['n_classes'] != shares[0]['n_classes'] for s in shares): return None
        cells = merge_cells(np.concatenate([s['cells'] for s in shares]))
        top = {name: np.concatenate([s['top'][name] for s in shares]) for name in shares[0]['top']}
        images = [image for s in shares for image in s['images']]
        order = np.argsort(-np.nan_to_num(top['loss'], nan=np.inf), kind='stable')[:self.k]  # NaN first, as topk
        rows = [dict(zip(top, values), input_image=images[i])
                for i, *values in zip(order.tolist(), *(top[name][order].tolist() for name in top))]
        return {'n_classes': shares[0]['n_classes'], 'cells': cells, 'top': rows,
                'values': shares[0]['values'] if len(shares) == 1 else None, 'loader': base_loader(self.dl)}


def decoded_inputs(dl, top: list[dict]) -> dict:
    """Item index -> its input as fastai's `show_batch` has it, for `top` rows of `ValidationCollector.result`: the
    image the pass saw, decoded, where it was kept, else the item reloaded through the validation transforms."""
    kept = [t for t in top if t['input_image'] is not None]
    inputs = {}
    if kept:  # the targets go along only because fastai decodes whole (input, target) samples
        batch = torch.stack([t['input_image'] for t in kept]), torch.tensor([t['actual'] for t in kept])
        samples = dl.decode_batch(to_device(batch, dl.device), max_n=len(kept))
        inputs.update((t['index'], sample[0]) for t, sample in zip(kept, samples))
    reload = [t['index'] for t in top if t['input_image'] is None]
    if reload: inputs.update(zip(reload, reloaded_inputs(dl, reload)))
    return inputs


def reloaded_inputs(dl, indices: list[int]) -> list:
    "The inputs of items `indices`, through the validation transforms and back, as fastai's `show_batch` has them."
    tabular = sys.modules.get('fastai.tabular.core')  # loaded wherever a TabDataLoader exists
    if tabular is not None and isinstance(dl, tabular.TabDataLoader):  # rows, not samples: as its show_batch has them
        rows = dl.dataset.iloc[list(indices)].decode()
        return [' '.join(f'{name}={value if isinstance(value, str) else format(value, ".6g")}'
                         for name, value in row.items())
                for _, row in rows.items[rows.x_names].iterrows()]
    batch = dl.do_batch([dl.do_item(i) for i in indices])
    batch = dl.after_batch(to_device(batch, dl.device))
    return [sample[0] for sample in dl.decode_batch(batch, max_n=len(indices))]


def render_input(value, size: int) -> dict:
    "A thumbnail for an image input, else its short text form."
    if isinstance(value, TensorImageBase) and value.ndim in (2, 3):
        return {'image': thumbnail_png(to_pixels(value.cpu().numpy()), size), 'image_type': 'image/png'}
    return {'text': str(value)[:MAX_TEXT]}
