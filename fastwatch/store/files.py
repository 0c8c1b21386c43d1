"""Store files: telling one from another file, and writing files (snapshots, exports, Binder files) without ever
clobbering one half-way."""
from __future__ import annotations

import ctypes
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import OutputError

AT_FDCWD, RENAME_EXCHANGE = -100, 2  # from Linux's <fcntl.h> and <linux/fs.h>
SQLITE_MAGIC = b'SQLite format 3\x00'  # the first bytes of every SQLite database file


def is_sqlite(path: str | os.PathLike) -> bool:
    "Whether the file at `path` starts as a SQLite database does (a store file, or another program's database)."
    with open(path, 'rb') as f: return f.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC


def check_new(path: Path, force: bool, directory: bool = False) -> None:
    "Refuse to replace an existing `path` unless `force`, and never a directory by a file or a file by a directory."
    if not path.exists(): return
    if path.is_dir() != directory:
        kind, wanted = ('a directory', 'file') if path.is_dir() else ('a file', 'directory')
        raise OutputError(f'{path} is {kind}: give a {wanted} name')
    if not force: raise OutputError(f'{path} exists: pass --force to replace it')


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux's `renameat2(RENAME_EXCHANGE)`); False where the system or
    the filesystem has no such call."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), 'renameat2', None)
    if renameat2 is None: return False
    if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0: return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP): return False
    raise OSError(code, os.strerror(code), str(b))


def replace(new: Path, path: Path) -> None:
    """Put `new` in the place of `path`. A file, or a directory for a missing `path`, moves in one rename; an existing
    directory is swapped with `new` in one step where Linux can (then `new` holds the old one), so that a reader
    sees the old or the new, never a missing or half-written one. Elsewhere the old directory is first moved aside
    (to `new`'s name plus `.old`): `path` is missing between two renames."""
    if not path.is_dir():
        os.replace(new, path)
    elif not exchange(new, path):
        os.rename(path, new.with_name(new.name + '.old'))
        os.rename(new, path)


@contextmanager
def writing(path: str | os.PathLike, force: bool = False, directory: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary path next to `path` for the caller to create (a file, or a directory if `directory`);
    when the block succeeds it replaces `path` (see `replace`), and when it fails it is removed: `path` is untouched
    or complete."""
    path = Path(path)
    check_new(path, force, directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{path.name}.', dir=path.parent)) / path.name
    try:
        yield tmp
        replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent)
