"""Each item's training dynamics, and what they say across a run.

Every epoch, for each split, the callback records every item's loss, the probability the model gave its label, its
margin (that probability minus the highest other class's) and the class predicted, from the passes training makes
anyway (`record/dynamics.py`): one packed row per split and epoch (`ItemValues`, table `item_epochs`).

Across the run they make the data map of "Dataset Cartography" (Swayamdipta et al., 2020): an item's confidence
(mean probability of its label), variability (its standard deviation across epochs) and correctness (how often it
was predicted right), and its area under the margin (Pleiss et al., 2020), here on probabilities: the mean margin.
Suspect items (likely mislabeled) are ranked by the margin averaged over the epochs with each epoch weighing half
as much as the next (`RECENT_WEIGHT`): a mislabeled item's label keeps losing to the class it looks like, epoch
after epoch, so its average stays low, while a hard but correct item's climbs as the model learns it; the first
epochs, when the model knew little of any item, weigh least. On the digits with 5% of the training images in a wrong
class's folder this finds at least as many of them as the last epoch's loss does (`benchmarks/bench_cleaning.py`).
"""
from __future__ import annotations

import copy
import zlib
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass, fields

import numpy as np

from .tables import ItemEpochRow, ItemsRow, item_epochs, item_images, items, top_losses

SPLITS = ('train', 'valid')
UNSEEN = -1  # the label and prediction of an item an epoch did not see (fastai's train loader drops its last batch)
RECENT_WEIGHT = 0.5  # the weight of each epoch's margin in the suspects' score against the epochs before it


@dataclass
class ItemValues:
    "One split's values in one epoch, by dataset index; NaN (and `UNSEEN`) for items the epoch did not see."
    loss: np.ndarray  # float32
    label_prob: np.ndarray  # float32
    margin: np.ndarray  # float32
    predicted: np.ndarray  # int32
    label: np.ndarray  # int32

    @classmethod
    def empty(cls, n: int) -> ItemValues:
        "The values of `n` items, none seen yet."
        nan, unseen = np.full(n, np.nan, np.float32), np.full(n, UNSEEN, np.int32)
        return cls(nan, nan.copy(), nan.copy(), unseen, unseen.copy())

    def __len__(self) -> int: return len(self.label)

    @property
    def seen(self) -> np.ndarray: return self.label != UNSEEN

    def pack(self) -> bytes:
        "The arrays, one after the other, compressed: what `item_epochs.item_values` holds."
        return zlib.compress(b''.join(np.ascontiguousarray(getattr(self, f.name)).astype(dtype).tobytes()
                                      for f, dtype in zip(fields(self), _DTYPES)), 1)

    @classmethod
    def unpack(cls, n: int, packed: bytes) -> ItemValues:
        data, arrays, at = zlib.decompress(packed), [], 0
        for dtype in _DTYPES:
            size = n * np.dtype(dtype).itemsize
            arrays.append(np.frombuffer(data, dtype, n, at).astype(dtype.lstrip('<')))
            at += size
        return cls(*arrays)


_DTYPES = ('<f4', '<f4', '<f4', '<i4', '<i4')  # little-endian, whatever the machine: stores travel


def recent_margin(score: np.ndarray | None, values: ItemValues) -> np.ndarray:
    "The suspects' score after one more epoch: each item's margin averaged, recent epochs weighing most."
    margin = values.margin.astype(np.float64)
    if score is None or len(score) != len(margin): return margin
    return np.where(np.isnan(margin), score,
                    np.where(np.isnan(score), margin, RECENT_WEIGHT * margin + (1 - RECENT_WEIGHT) * score))


@dataclass
class DataMap:
    "What a split's recorded epochs say of each of its items (arrays by dataset index; NaN for items never seen)."
    split: str
    names: list[str]
    epochs: list[int]  # the epochs recorded, in order
    confidence: np.ndarray  # mean probability of the label
    variability: np.ndarray  # its standard deviation across epochs
    correctness: np.ndarray  # fraction of epochs predicted right
    aum: np.ndarray  # mean margin: the area under the margin
    score: np.ndarray  # the suspects' score: the margin averaged with recent epochs weighing most (`recent_margin`)
    last: ItemValues  # each item's values in the latest epoch that saw it
    history: list[ItemValues]  # every epoch's values, in order of `epochs`

    def suspects(self) -> np.ndarray:
        "Dataset indices of the items seen, most suspect first: lowest score, then lowest confidence."
        seen = np.flatnonzero(~np.isnan(self.score))
        return seen[np.lexsort((self.confidence[seen], self.score[seen]))]

    def by_last_loss(self) -> np.ndarray:
        "Dataset indices of the items seen, highest loss in the latest epoch first (what one epoch's top losses show)."
        seen = np.flatnonzero(self.last.seen)
        return seen[np.argsort(-np.nan_to_num(self.last.loss[seen], nan=np.inf), kind='stable')]

    def name(self, index: int) -> str: return name_of(self.names, index)


class _Moments:
    "Each item's running count, mean and sum of squared deviations (Welford) of a value, NaN (not seen) skipped."

    def __init__(self, n: int = 0):
        self.count, self._mean, self._m2 = np.zeros(n, np.int64), np.zeros(n), np.zeros(n)

    def add(self, x: np.ndarray) -> None:
        # Whole arrays, the unseen items' terms zero: much faster than indexing the seen ones.
        seen = ~np.isnan(x)
        self.count += seen
        delta = np.where(seen, x - self._mean, 0.0)  # float64, as the mean
        self._mean += delta / np.maximum(self.count, 1)  # an item never seen: 0 / 1
        self._m2 += delta * np.where(seen, x - self._mean, 0.0)

    def grow(self, n: int) -> None:
        "Room for `n` items, the new ones not seen yet."
        more = n - len(self.count)
        self.count = np.concatenate([self.count, np.zeros(more, np.int64)])
        self._mean, self._m2 = (np.concatenate([a, np.zeros(more)]) for a in (self._mean, self._m2))

    def mean(self) -> np.ndarray: return np.where(self.count > 0, self._mean, np.nan)

    def std(self) -> np.ndarray:
        "The population standard deviation (`np.nanstd`'s)."
        return np.sqrt(np.divide(self._m2, self.count, out=np.full(len(self.count), np.nan), where=self.count > 0))


class DataMapBuilder:
    """A split's data map kept up to date one `item_epochs` row at a time: each row is unpacked once and folded into
    running statistics, so that the map after one more epoch costs O(items), not O(items x epochs)."""

    def __init__(self, split: str):
        self.split = split
        self._start()

    def _start(self) -> None:
        self.epochs: list[int] = []
        self.history: list[ItemValues] = []  # every epoch's values, in order, each as long as the longest
        self.label_prob, self.right, self.margin = _Moments(), _Moments(), _Moments()
        self.score = np.empty(0)
        self.last = ItemValues.empty(0)

    def add(self, row: ItemEpochRow) -> None:
        "Fold in one epoch of the split's values."
        values = ItemValues.unpack(row.n_items, row.item_values)
        if self.epochs and row.epoch <= self.epochs[-1]:
            # Never from a feed's cursor (a run's one writer commits its epochs in order, and the cursor reads those
            # after the last read): put it in its place and fold every epoch again, from the values held.
            held = list(zip(self.epochs, self.history))
            held.insert(bisect_right(self.epochs, row.epoch), (row.epoch, values))
            self._start()
            for epoch, h in held: self._fold(epoch, h)
        else: self._fold(row.epoch, values)

    def _fold(self, epoch: int, values: ItemValues) -> None:
        "Add an epoch after those added."
        if len(values) > len(self.last): self._grow(len(values))
        if len(values) < len(self.last): values = _padded(values, len(self.last))
        self.epochs.append(epoch)
        self.history.append(values)
        self.label_prob.add(values.label_prob)
        self.right.add(np.where(values.seen, values.predicted == values.label, np.nan))
        self.margin.add(values.margin)
        self.score = recent_margin(self.score, values)
        for f in fields(self.last): np.copyto(getattr(self.last, f.name), getattr(values, f.name), where=values.seen)

    def _grow(self, n: int) -> None:
        "Room for more items (a dataset that grew between fits): the new ones unseen in the epochs before."
        for moments in (self.label_prob, self.right, self.margin): moments.grow(n)
        self.score = np.concatenate([self.score, np.full(n - len(self.score), np.nan)])
        self.last = _padded(self.last, n)
        self.history = [_padded(h, n) for h in self.history]

    def build(self, items: ItemsRow | None = None) -> DataMap | None:
        """The data map of the epochs added, named by the split's `items` row; None before any. Its arrays are its
        own: later adds leave a map built before them as it was."""
        if not self.epochs: return None
        names = items.names if items is not None else [unnamed(i) for i in range(len(self.last))]
        return DataMap(self.split, names, list(self.epochs), self.label_prob.mean(), self.label_prob.std(),
                       self.right.mean(), self.margin.mean(), self.score.copy(), copy.deepcopy(self.last),
                       list(self.history))


def data_map(split: str, rows: list[ItemEpochRow], items: ItemsRow | None = None) -> DataMap | None:
    "The data map of a split from its `item_epochs` rows (any order) and its `items` row; None with no rows."
    builder = DataMapBuilder(split)
    for row in sorted((r for r in rows if r.split == split), key=lambda r: r.epoch): builder.add(row)
    return builder.build(items)


def _padded(values: ItemValues, n: int) -> ItemValues:
    "Values of more items than an epoch saw (a dataset that grew between fits): the new ones unseen."
    out = ItemValues.empty(n)
    for f in fields(out): getattr(out, f.name)[:len(values)] = getattr(values, f.name)
    return out


def read_data_map(store, run_id: str, split: str) -> DataMap | None:
    "A run's data map of `split`, read from a `Store`; None when the run recorded no values for it."
    names = store.rows(items, run_id, split=split)
    return data_map(split, store.rows(item_epochs, run_id, split=split), names[0] if names else None)


def unnamed(index: int) -> str:
    "The name of an item whose identity was not recorded: its index in the dataset."
    return f'#{index}'


def name_of(names: list[str], index: int) -> str:
    "Item `index`'s name among a split's recorded `names`, or `unnamed(index)` beyond them."
    return names[index] if index < len(names) else unnamed(index)


def item_names(store, run_id: str, split: str) -> list[str]:
    "A split's item names as the run recorded them (`items`): one per dataset index; none if not recorded."
    rows = store.rows(items, run_id, split=split)
    return rows[0].names if rows else []


def item_thumbnails(store, run_id: str, split: str, epoch: int | None = None) -> dict[int, tuple]:
    """A split's thumbnails by item index, rows with `image`, `image_type` and `text`: its suspects'
    (`item_images`) and, for the valid split, its top losses' (of `epoch`, or of every epoch, the latest kept)."""
    losses = store.rows(top_losses, run_id, **({} if epoch is None else {'epoch': epoch})) if split == 'valid' else []
    return thumbnails(store.rows(item_images, run_id, split=split), losses)


def thumbnails(images: Iterable[tuple], losses: Iterable[tuple]) -> dict[int, tuple]:
    """Thumbnails by item index from a split's `item_images` rows and top-loss rows, each in order: the latest of an
    item kept, a top loss's before a suspect's."""
    found = {row.item_index: row for row in images}
    found.update((row.item_index, row) for row in losses)
    return found
