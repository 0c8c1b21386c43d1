"""Writing files (snapshots, exports, Binder files) without ever clobbering one half-way."""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import UsageError


def check_new(path: Path, force: bool, directory: bool = False) -> None:
    "Refuse to replace an existing `path` unless `force`, and never a directory by a file or a file by a directory."
    if not path.exists(): return
    if path.is_dir() != directory:
        kind, wanted = ('a directory', 'file') if path.is_dir() else ('a file', 'directory')
        raise UsageError(f'{path} is {kind}: give a {wanted} name')
    if not force: raise UsageError(f'{path} exists: pass --force to replace it')


@contextmanager
def writing(path: str | os.PathLike, force: bool = False, directory: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary path next to `path` for the caller to create (a file, or a directory if `directory`);
    when the block succeeds it replaces `path`, and when it fails it is removed: `path` is untouched or complete."""
    path = Path(path)
    check_new(path, force, directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{path.name}.', dir=path.parent)) / path.name
    try:
        yield tmp
        if path.is_dir(): shutil.rmtree(path)  # os.replace moves a directory only onto an empty one
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent)
