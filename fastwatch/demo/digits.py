"""A real image-classification task that works offline: scikit-learn's bundled 8x8 digits as an image folder.

Used by `fastwatch demo`, the tests and the benchmarks. Imports fastai: training side only.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from fastai.vision.all import (
    CrossEntropyLossFlat,
    ImageDataLoaders,
    Learner,
    Resize,
    error_rate,
    nn,
    params,
    vision_learner,
)
from PIL import Image


def digits_folder(path: str | Path, per_class: int | None = None, valid_pct: float = 0.2,
                  class_names: list[str] | None = None) -> Path:
    """Write the digits as PNGs into `path/{train,valid}/<class>/` (once; an existing folder is reused).
    `per_class` limits the images per class; `class_names` renames the ten classes."""
    path = Path(path)
    if (path / 'valid').is_dir(): return path
    from sklearn.datasets import load_digits
    digits = load_digits()
    names = class_names or [str(i) for i in range(10)]
    rng = np.random.default_rng(42)
    for label in range(10):
        idx = rng.permutation(np.flatnonzero(digits.target == label))[:per_class]
        n_valid = max(1, round(len(idx) * valid_pct))
        for i, item in enumerate(idx):
            folder = path / ('valid' if i < n_valid else 'train') / names[label]
            folder.mkdir(parents=True, exist_ok=True)
            pixels = (digits.images[item] * (255 / 16)).astype(np.uint8)
            Image.fromarray(pixels, mode='L').save(folder / f'{item:04d}.png')
    return path


MISLABELLED = '.mislabelled.json'  # written by `mislabel` into the folder's root


def mislabel(path: str | Path, fraction: float = 0.05, seed: int = 0) -> list[str]:
    """Move `fraction` of the training images (`path/train/<class>/*.png`) each into another class's folder, chosen
    at random (the images and their new classes are the same for the same folder and `seed`): label noise to find.

    Returns the moved images' new paths relative to `path`, as the store names items (`train/7/0879.png`), and keeps
    them in `path/.mislabelled.json` (`{"fraction", "seed", "moved": {new path: original path}}`). A folder is
    mislabelled once: a second call raises ValueError (read the marker for the list)."""
    path = Path(path)
    marker = path / MISLABELLED
    if marker.exists():
        raise ValueError(f'{path} was already mislabelled (the moved images are listed in {marker})')
    if not 0 <= fraction <= 1: raise ValueError(f'mislabel: fraction must be between 0 and 1, not {fraction}')
    classes = sorted(d.name for d in (path / 'train').iterdir() if d.is_dir()) if (path / 'train').is_dir() else []
    if len(classes) < 2: raise ValueError(f'mislabel: {path / "train"} needs at least two class folders')
    files = sorted(f.relative_to(path) for c in classes for f in (path / 'train' / c).glob('*.png'))
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(files), size=round(fraction * len(files)), replace=False)
    moves = {}
    for i in sorted(chosen):
        old = files[i]
        others = [c for c in classes if c != old.parent.name]
        new = old.parent.parent / others[rng.integers(len(others))] / old.name
        if (path / new).exists() or new in moves: raise ValueError(f'mislabel: {path / new} exists already')
        moves[new] = old
    marker.write_text(json.dumps({'fraction': fraction, 'seed': seed,
                                  'moved': {new.as_posix(): old.as_posix() for new, old in moves.items()}}, indent=1))
    for new, old in moves.items(): (path / old).rename(path / new)
    return [new.as_posix() for new in moves]


def digits_dls(path: str | Path, size: int = 16, bs: int = 64, **kwargs) -> ImageDataLoaders:
    "DataLoaders over a `digits_folder`, the classic fastai way (`ImageDataLoaders.from_folder`)."
    return ImageDataLoaders.from_folder(path, train='train', valid='valid', item_tfms=Resize(size), bs=bs,
                                        num_workers=0, **kwargs)


def small_cnn(n_classes: int, width: int = 16) -> nn.Sequential:
    "A small CNN as (body, head), so that `fine_tune` really freezes the body in its first fit."
    body = nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
    head = nn.Sequential(nn.Flatten(), nn.Linear(2 * width, n_classes))
    return nn.Sequential(body, head)


def digits_learner(dls: ImageDataLoaders, arch: str = 'cnn', **kwargs) -> Learner:
    "A learner on the digits: the small CNN (default), or fastai's `vision_learner` with an untrained resnet18."
    kwargs.setdefault('metrics', error_rate)
    if arch == 'resnet18':
        from torchvision.models import resnet18
        return vision_learner(dls, resnet18, pretrained=False, **kwargs)
    return Learner(dls, small_cnn(len(dls.vocab)), loss_func=CrossEntropyLossFlat(),
                   splitter=lambda m: [params(m[0]), params(m[1])], **kwargs)
