"""The identity of a run's data items: what the store calls each (a file's path relative to the data's root, a
DataFrame row's index label, a short text) and, for files, what they were when recorded."""
from __future__ import annotations

import os
from pathlib import Path

from ..store.dynamics import unnamed

MAX_TEXT = 200


def _relative(path: str, root: str) -> str:
    "`path` relative to `root`, as `Path.relative_to` gives it (lexically), or `path` itself when not under it."
    if root == '.' or not path.startswith(root): return path
    if root == '/': return path[1:] or '.'
    return '.' if path == root else path[len(root) + 1:] if path[len(root)] == '/' else path


def item_name(dl, index: int, root: Path | None = None) -> str:
    "The identity of item `index` of a loader: its file path (relative to `root`), or its label."
    items = getattr(dl, 'items', None)
    try:
        item = items.index[index] if hasattr(items, 'iloc') else items[index]
    except Exception:
        return unnamed(index)
    if isinstance(item, Path): item = _relative(str(item), str(root or '/'))
    return str(item)[:MAX_TEXT]


def item_identities(dl, root: Path | None) -> tuple[str | None, list[str], list | None]:
    """The identity of each of a loader's items by dataset index, as the top losses name them (a file's path relative
    to the data's `root`, a DataFrame row's index label), and for files their `[size, mtime_ns]` now: the data's
    root as an absolute path, the names, the files (None when the items are not files)."""
    n, items = len(dl.dataset), getattr(dl, 'items', None)
    paths = [items[i] for i in range(n)] if items is not None and not hasattr(items, 'iloc') else []
    if not paths or not all(isinstance(path, Path) for path in paths):
        return None, [item_name(dl, i, root) for i in range(n)], None
    paths, files, base = [str(path) for path in paths], [], str(root or '/')
    for path in paths:
        try: info = os.stat(path)
        except OSError: files.append(None)
        else: files.append([info.st_size, info.st_mtime_ns])
    return str(Path(root or '.').resolve()), [_relative(path, base)[:MAX_TEXT] for path in paths], files


def item_files(dl, indices: list[int]) -> dict[int, Path] | None:
    "The files of a loader's items at `indices`, when its items are files; None for other items."
    items = getattr(dl, 'items', None)
    if items is None or hasattr(items, 'iloc'): return None
    try: files = {index: items[index] for index in indices}
    except Exception: return None
    return files if all(isinstance(path, Path) for path in files.values()) else None
