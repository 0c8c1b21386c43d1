"""Runs with many classes, really trained: a tiny linear model on random features (for tests and benchmarks)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import accuracy

from fastwatch import WatchCallback

FEATURES = 16
IGNORE_INDEX = -100  # CrossEntropyLossFlat's (PyTorch's) default ignore_index


def random_dls(n_classes: int, n_train: int, n_valid: int, ignored: float = 0.0, bs: int = 256,
               seed: int = 0) -> DataLoaders:
    """Features scattered around one random centre per class; a share `ignored` of the targets is IGNORE_INDEX.
    `dls.vocab` names the classes."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, FEATURES)).astype(np.float32)

    def items(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        targets = rng.integers(n_classes, size=n)
        x = centres[targets] + 0.5 * rng.normal(size=(n, FEATURES)).astype(np.float32)
        targets[rng.random(n) < ignored] = IGNORE_INDEX
        return list(zip(torch.from_numpy(x), torch.from_numpy(targets)))

    dls = DataLoaders.from_dsets(items(n_train), items(n_valid), bs=bs, num_workers=0)
    dls.vocab = [f'class {i}' for i in range(n_classes)]
    return dls


def train_many_classes(store: str | Path, n_classes: int, n_train: int = 4000, n_valid: int = 4000,
                       ignored: float = 0.05, epochs: int = 1, cbs=()) -> Learner:
    "Fit a linear model on `random_dls` with a `WatchCallback` into `store`; returns the learner."
    dls = random_dls(n_classes, n_train, n_valid, ignored)
    learn = Learner(dls, torch.nn.Linear(FEATURES, n_classes), loss_func=CrossEntropyLossFlat(), metrics=accuracy,
                    cbs=[WatchCallback(store=store, name=f'{n_classes:,} classes'), *cbs])
    with learn.no_bar(), learn.no_logging(): learn.fit(epochs, 1e-2)
    return learn
