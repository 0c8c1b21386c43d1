"""The identity of a run's data items: what the store calls each (a file's path relative to the data's root, a
DataFrame row's index label, a short text) and, for files, what they were when recorded."""
from __future__ import annotations

from pathlib import Path

MAX_TEXT = 200


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


def item_identities(dl, root: Path | None) -> tuple[str | None, list[str], list | None]:
    """The identity of each of a loader's items by dataset index, as the top losses name them (a file's path relative
    to the data's `root`, a DataFrame row's index label), and for files their `[size, mtime_ns]` now: the data's
    root as an absolute path, the names, the files (None when the items are not files)."""
    n, items = len(dl.dataset), getattr(dl, 'items', None)
    names = [item_name(dl, i, root) for i in range(n)]
    if items is None or hasattr(items, 'iloc') or not all(isinstance(items[i], Path) for i in range(n)):
        return None, names, None
    files = []
    for i in range(n):
        try: info = items[i].stat()
        except OSError: files.append(None)
        else: files.append([info.st_size, info.st_mtime_ns])
    return str(Path(root or '.').resolve()), names, files


def item_files(dl, indices: list[int]) -> dict[int, Path] | None:
    "The files of a loader's items at `indices`, when its items are files; None for other items."
    items = getattr(dl, 'items', None)
    if items is None or hasattr(items, 'iloc'): return None
    try: files = {index: items[index] for index in indices}
    except Exception: return None
    return files if all(isinstance(path, Path) for path in files.values()) else None
