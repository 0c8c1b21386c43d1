"""A real image-classification task that works offline: scikit-learn's bundled 8x8 digits as an image folder.

Used by `fastwatch demo`, the tests and the benchmarks. Imports fastai: training side only.
"""
from __future__ import annotations

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
