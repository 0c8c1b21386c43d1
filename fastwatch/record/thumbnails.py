"""Small PNG thumbnails of decoded fastai inputs (numpy pixels in, PNG bytes out)."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image


def to_pixels(image: np.ndarray) -> np.ndarray:
    "uint8 pixels (H, W) or (H, W, 3) from a decoded image array in (C, H, W) or (H, W) layout, 0-1 or 0-255."
    image = np.asarray(image)
    if image.ndim == 3:
        image = np.moveaxis(image, 0, -1)
        image = image[..., 0] if image.shape[-1] != 3 else image
    image = image.astype(float)
    if image.size and image.max() <= 1.0 and image.min() >= 0.0: image = image * 255
    return np.clip(image, 0, 255).astype(np.uint8)


def thumbnail_png(pixels: np.ndarray, size: int = 128) -> bytes:
    """PNG bytes of the image scaled down so that its longest side is at most `size`. A smaller image is kept as it
    is: viewers enlarge it pixelated, as fastai shows it, and it costs a fraction of an enlarged one to encode."""
    image = Image.fromarray(pixels)
    if max(image.size) > size:
        scale = size / max(image.size)
        image = image.resize(tuple(max(1, round(side * scale)) for side in image.size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format='PNG', compress_level=1)  # much faster than the default level, hardly larger
    return out.getvalue()


def file_thumbnail(path, size: int = 128) -> dict:
    "The thumbnail columns (`image`, `image_type`) of an image file as it is on disk; none when it is not one."
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert('L' if image.mode in ('1', 'L', 'I', 'I;16', 'F') else 'RGB'))
    except (OSError, ValueError, Image.DecompressionBombError):
        return {}
    return {'image': thumbnail_png(pixels, size), 'image_type': 'image/png'}
