"""The stored form of a confusion matrix: its non-zero cells, so that 20,000 classes cost what their mistakes cost,
not n² counts.

Cells are an (k, 3) int64 array of (actual, predicted, count) rows, sorted by actual then predicted; stored as
zlib-compressed little-endian uint32 triplets.
"""
from __future__ import annotations

import zlib

import numpy as np


def cells_of(matrix: np.ndarray) -> np.ndarray:
    "The non-zero cells of a dense (n, n) matrix of counts."
    matrix = np.asarray(matrix)
    actual, predicted = np.nonzero(matrix)
    return np.stack([actual, predicted, matrix[actual, predicted]], axis=1).astype(np.int64)


def pack_cells(cells: np.ndarray) -> bytes:
    "Cells as stored."
    return zlib.compress(np.ascontiguousarray(np.asarray(cells).reshape(-1, 3), dtype='<u4').tobytes(), 1)


def unpack_cells(blob: bytes) -> np.ndarray:
    "Stored cells back as an (k, 3) int64 array."
    return np.frombuffer(zlib.decompress(blob), dtype='<u4').reshape(-1, 3).astype(np.int64)


def dense(cells: np.ndarray, n: int) -> np.ndarray:
    "The (n, n) int64 matrix of counts that `cells` describe."
    matrix = np.zeros((n, n), dtype=np.int64)
    np.add.at(matrix, (cells[:, 0], cells[:, 1]), cells[:, 2])
    return matrix


def binned(cells: np.ndarray, n: int, side: int) -> tuple[np.ndarray, int]:
    """The matrix of `n` classes at most `side` × `side`: each bin adds up `size` consecutive actual and predicted
    classes. Returns the (m, m) int64 counts and `size`; size 1 is the matrix itself."""
    size = max(1, -(-n // side))
    m = -(-n // size)
    matrix = np.zeros((m, m), dtype=np.int64)
    np.add.at(matrix, (cells[:, 0] // size, cells[:, 1] // size), cells[:, 2])
    return matrix, size
