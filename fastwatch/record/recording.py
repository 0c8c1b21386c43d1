"""The run being recorded: the state that fastai's events share while a run records, in one object made when
recording starts (`Recording`), owned by the training thread. What the writer's thread needs of it (the thumbnails
it renders) it gets from `Thumbnails`, whose two halves each have one owner."""
from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from ..store import RunInfo
from ..store.dynamics import ItemValues
from ..store.records import FitInfo
from .dynamics import SuspectImages, TrainingDynamics
from .validation import render_input
from .writer import Writer

if TYPE_CHECKING:
    from ..view.inline import NotebookView

MAX_RENDERED = 1024  # thumbnails of a run's top-loss items kept for its later epochs


@dataclass(slots=True)
class Position:
    """Where the recorded run is: batches trained (`step`), epochs across its fits, which fit, whether frozen.
    Not attributes of the callback: fastai checks each attribute a callback sets against the Learner's."""
    step: int = 0
    epoch: int = 0
    fit: int = -1
    frozen: bool = False


class Thumbnails:
    """The thumbnail (or text form) of each of a run's top-loss items, made once for all its epochs. The training
    thread says which items each pass shows (`missing`, then `shown`: the least recently shown beyond `keep` are
    forgotten); the writer's thread renders the new ones and keeps them (`render`, `of`)."""

    def __init__(self, size: int, keep: int = MAX_RENDERED):
        self.size, self.keep = size, keep
        self._shown: OrderedDict[int, None] = OrderedDict()  # the training thread's: most recently shown last
        self._rendered: dict[int, dict] = {}  # the writer thread's: item index -> its image or text columns

    def missing(self, indices: list[int]) -> set[int]:
        "Of the items a pass shows, those never rendered (or forgotten since). Training thread."
        return {index for index in indices if index not in self._shown}

    def shown(self, indices: list[int]) -> list[int]:
        "Mark items as shown now; returns those forgotten. Training thread."
        for index in indices:
            self._shown[index] = None
            self._shown.move_to_end(index)
        forgotten = []
        while len(self._shown) > max(self.keep, len(indices)): forgotten.append(self._shown.popitem(last=False)[0])
        return forgotten

    def render(self, inputs: dict, forgotten: list[int]) -> None:
        "Render new items' inputs and forget items, in the order the training thread decided. Writer thread."
        for index in forgotten: self._rendered.pop(index, None)
        for index, value in inputs.items(): self._rendered[index] = render_input(value, self.size)

    def of(self, index: int) -> dict:
        "An item's thumbnail columns (`image`, `image_type`) or `text`; empty when it has none. Writer thread."
        return self._rendered.get(index, {})


@dataclass(eq=False)
class Recording:
    "The run being recorded: its id, the writer it goes to, what it was trained with, and where it is."
    id: str
    writer: Writer
    info: RunInfo
    class_names: list[str] | None
    thumbnails: Thumbnails
    position: Position = field(default_factory=Position)
    epoch_started: float = field(default_factory=time.time)
    epoch_log: list | None = None  # the Recorder's log of this epoch, kept at its validation pass's end
    shown: NotebookView | None = None  # the dashboard under the notebook cell that trains, with `show=True`
    dynamics: TrainingDynamics | None = None  # the training items' values, with `dynamics=True`
    epoch_values: dict[str, ItemValues | None] = field(default_factory=dict)  # this epoch's, by split
    named_splits: set[str] = field(default_factory=set)  # splits whose items' identities are recorded
    suspects: dict[str, SuspectImages] = field(default_factory=dict)  # by split

    def start_fit(self, n_epoch: int, lr, metric_names: list[str], frozen: bool, planned_epochs: int) -> None:
        "A fit of the run begins: the next fit number, and what the run's info says about it (new metrics last)."
        at = self.position
        self.info.metric_names += [name for name in metric_names if name not in self.info.metric_names]
        at.fit += 1
        at.frozen = frozen
        self.info.fits.append(FitInfo(at.fit, n_epoch, lr, frozen, at.epoch))
        self.info.planned_epochs = planned_epochs
        self.writer.update_run(self.id, info=self.info_now())

    def info_now(self) -> RunInfo:
        "A copy of the run's info as it is now, for the writer's thread: the training thread changes its own."
        return replace(self.info, fits=list(self.info.fits), metric_names=list(self.info.metric_names))
