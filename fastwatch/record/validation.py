"""The confusion matrix and the highest-loss items of a validation pass, gathered from fastai's own pass.

Each batch adds what `learn.pred` and `learn.yb` already hold (per-item loss with the loss function's reduction
set to none, as `ClassificationInterpretation` computes it): no extra forward pass. Everything stays on the
model's device until the pass ends, so no batch adds a device synchronisation.
"""
from __future__ import annotations

from pathlib import Path

import torch
from fastai.learner import Learner
from fastai.torch_core import TensorImageBase, to_device

from .thumbnails import thumbnail_png, to_pixels

MAX_TEXT = 200


def is_single_label(pred: torch.Tensor, targ: torch.Tensor) -> bool:
    "True for single-label classification: one score per class, one integer class per item."
    return (pred.ndim == 2 and targ.ndim == 1 and len(pred) == len(targ)
            and not targ.is_floating_point() and not targ.is_complex())


class ValidationCollector:
    "Accumulates one validation pass: call `add_batch` after each batch, `result` after the pass."

    def __init__(self, learn: Learner, k: int):
        self.learn, self.k = learn, k
        self.classification = True
        self.matrix = None
        self.losses, self.decoded, self.probs, self.targets = [], [], [], []

    def add_batch(self) -> None:
        if not self.classification or not len(self.learn.yb): return
        # As plain tensors: fastai's tensor subclasses make every small operation several times slower.
        with torch._C.DisableTorchFunctionSubclass(): self._add(self.learn.pred, self.learn.yb[0])

    def _add(self, pred: torch.Tensor, targ: torch.Tensor) -> None:
        if not is_single_label(pred, targ):
            self.classification = False
            return
        loss_func = self.learn.loss_func
        with self.learn.loss_not_reduced(): losses = self.learn.loss_func(pred, targ)
        if losses.shape != targ.shape:
            self.classification = False
            return
        probs = loss_func.activation(pred) if hasattr(loss_func, 'activation') else pred.softmax(-1)
        decoded = loss_func.decodes(probs) if hasattr(loss_func, 'decodes') else probs.argmax(-1)
        n = pred.shape[1]
        if self.matrix is None: self.matrix = torch.zeros(n * n, dtype=torch.long, device=targ.device)
        self.matrix.index_add_(0, targ.long() * n + decoded.long(), torch.ones_like(targ, dtype=torch.long))
        self.losses.append(losses.detach().float())
        self.decoded.append(decoded.detach())
        self.probs.append(probs.detach().gather(-1, decoded.long()[:, None])[:, 0].float())
        self.targets.append(targ.detach())

    def result(self) -> dict | None:
        "`{'matrix': (n, n) numpy counts, 'top': [{'index', 'loss', 'actual', 'predicted', 'probability'}]}`."
        if not self.classification or self.matrix is None: return None
        n = int(round(self.matrix.numel() ** 0.5))
        losses = torch.cat(self.losses)
        top_loss, top_index = losses.topk(min(self.k, len(losses)))
        columns = {'index': top_index, 'loss': top_loss, 'actual': torch.cat(self.targets)[top_index],
                   'predicted': torch.cat(self.decoded)[top_index],
                   'probability': torch.cat(self.probs)[top_index]}
        columns = {name: values.cpu().tolist() for name, values in columns.items()}
        top = [dict(zip(columns, values)) for values in zip(*columns.values())]
        return {'matrix': self.matrix.view(n, n).cpu().numpy(), 'top': top}


def item_name(dl, index: int, root: Path | None = None) -> str:
    "The identity of validation item `index`: its file path (relative to `root`), or its label."
    items = getattr(dl, 'items', None)
    try:
        item = items.index[index] if hasattr(items, 'iloc') else items[index]
    except Exception:
        return f'#{index}'
    if isinstance(item, Path):
        try: item = item.relative_to(root or Path('/'))
        except ValueError: pass
    return str(item)[:MAX_TEXT]


def decoded_inputs(dl, indices: list[int]) -> list:
    "The inputs of items `indices`, through the validation transforms and back, as fastai's `show_batch` has them."
    batch = dl.do_batch([dl.do_item(i) for i in indices])
    batch = dl.after_batch(to_device(batch, dl.device))
    return [sample[0] for sample in dl.decode_batch(batch, max_n=len(indices))]


def render_input(value, size: int) -> dict:
    "A thumbnail for an image input, else its short text form."
    if isinstance(value, TensorImageBase) and value.ndim in (2, 3):
        return {'image': thumbnail_png(to_pixels(value.cpu().numpy()), size), 'image_type': 'image/png'}
    return {'text': str(value)[:MAX_TEXT]}
