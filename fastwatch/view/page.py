"""What a dashboard page asks for: its query string (`?run=ID&store=WHERE`, sent by Voila to a preheated kernel),
and the store it opens.

`store` is a path inside the served folder (`fastwatch serve --root`; none without it), or an https URL of a store
file (fetched by `fetch.py` into a private folder, with a size limit and a deadline, and checked to be a fastwatch
store before it is opened) or of a published run's folder (followed by `remote.py`); without it the page opens the
served store. Every store is opened read-only: a viewer can change nothing. Messages repeat what the viewer typed,
never a server path.
"""
from __future__ import annotations

import asyncio
import atexit
import json
import os
import re
import shutil
import stat
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import parse_qs

from ..errors import QueryError, StoreError
from ..remote.fetch import fetch, shown
from ..remote.protocol import follow, is_published
from ..store import Store, display_location, open_store
from ..store.files import is_sqlite
from ..store.records import RUN_ID

PARAMETERS = ('run', 'store', 'view')
VOILA_PARAMETERS = ('token', 'template', 'theme')  # Voila's own, not the dashboard's
MAX_DOWNLOAD = 256 * 2**20
MAX_QUERY = 4096
SCHEME = re.compile(r'[A-Za-z][A-Za-z0-9+.-]*:')  # file:, data:, javascript:, ...: a URL, not a path
REMOTE_TIMEOUT = 30  # seconds for a whole download, however slowly its server sends it
DOWNLOADS_ENV = 'FASTWATCH_DOWNLOADS'
OWNER_ENV = 'FASTWATCH_OWNER'  # '1': the page of the served store is its owner's (`fastwatch serve` sets it)
_own_downloads: Path | None = None  # this kernel's downloads folder, when `fastwatch serve` gave it none


def parse_query(query: str | None) -> dict[str, str]:
    "`run` and `store` from a page's query string; `QueryError` for anything else."
    if len(query or '') > MAX_QUERY: raise QueryError(f'the query string is longer than {MAX_QUERY} characters')
    params = parse_qs(query or '', keep_blank_values=True)
    unknown = sorted(set(params) - set(PARAMETERS) - set(VOILA_PARAMETERS))
    if unknown:
        names = ', '.join(_short(name, 40) for name in unknown[:3]) + (' …' if len(unknown) > 3 else '')
        raise QueryError(f'unknown parameter {names}: the dashboard takes run=, store= and view=')
    found = {}
    for key in PARAMETERS:
        values = params.get(key, [])
        if len(values) > 1: raise QueryError(f'{key}= is given {len(values)} times: give it once')
        if values and not values[0].strip(): raise QueryError(f'{key}= is empty')
        if values: found[key] = values[0].strip()
    if 'run' in found and not RUN_ID.fullmatch(found['run']):
        raise QueryError(f"run= takes a run id (letters, digits, '-', '_'), not {_short(found['run'])}")
    if found.get('view', 'runs') != 'runs':
        raise QueryError(f"view= takes runs (the runs table alone), not {_short(found['view'])}")
    if 'store' in found and not found['store'].isprintable():
        raise QueryError(f"store= holds a control character: {_short(found['store'])}")
    return found


def _request_info(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The page's request (its query string, host, ...) as Voila sends it to the preheated kernel a page takes:
    `voila.utils.wait_for_request` without importing voila, which would bring the whole Jupyter server into the
    kernel."""
    from tornado.websocket import websocket_connect  # tornado is loaded in a kernel already
    base = environ.get('VOILA_WS_BASE_URL') or environ.get('VOILA_SERVER_URL', '/')
    url = (f"{environ.get('VOILA_WS_PROTOCOL', 'ws')}://{environ.get('VOILA_APP_IP', '127.0.0.1')}:"
           f"{environ.get('VOILA_APP_PORT', '8866')}{base}voila/query/{environ['VOILA_KERNEL_ID']}")

    async def receive() -> str | None:
        connection = await websocket_connect(url, connect_timeout=5)
        try: return await connection.read_message()
        finally: connection.close()
    found = {}  # the kernel's own event loop is running: wait on another, in a thread, as voila does
    thread = threading.Thread(target=lambda: found.update(json.loads(asyncio.run(receive()) or '{}')))
    thread.start()
    thread.join()
    return found


def preheated(environ: Mapping[str, str] = os.environ) -> bool:
    "Whether this kernel was started by Voila before its page asked (`fastwatch serve`'s preheated kernels)."
    return environ.get('VOILA_PREHEAT') == 'True'


def page_query() -> str:
    "The page's query string. A preheated Voila kernel waits here for the page's request."
    if preheated(): os.environ.update(_request_info())
    return os.environ.get('QUERY_STRING', '')


def served_root(environ: Mapping[str, str] = os.environ) -> Path:
    """The folder served: `fastwatch serve --root`, else the repository (on Binder, repo2docker sets REPO_DIR to it,
    while the kernel runs in the notebook's folder), else the current folder."""
    return Path(environ.get('FASTWATCH_ROOT') or environ.get('REPO_DIR') or os.getcwd()).resolve()


def store_root(environ: Mapping[str, str] = os.environ) -> Path | None:
    """The folder whose store files `?store=` may open, None for none: `$FASTWATCH_ROOT`, which `fastwatch serve`
    sets to its `--root` ('' without it: only the served store); under plain Voila (Binder), `served_root()`."""
    if 'FASTWATCH_ROOT' not in environ: return served_root(environ)
    return Path(environ['FASTWATCH_ROOT']).resolve() if environ['FASTWATCH_ROOT'] else None


def store_files(root: Path | None = None, limit: int = 20) -> list[str]:
    "Store files a page could open (`*.fastwatch`, `*.db`) in the served folder and its `runs/`, for messages."
    root = root or store_root()
    if root is None: return []
    found = [p for pattern in ('*.fastwatch', '*.db', 'runs/*.fastwatch', 'runs/*.db') for p in root.glob(pattern)]
    return sorted(str(p.relative_to(root)) for p in found if p.resolve().is_relative_to(root))[:limit]


def downloads_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """The private folder this kernel downloads remote stores into: `$FASTWATCH_DOWNLOADS`, made by `fastwatch serve`
    (0700, removed when it exits), when it is a folder of this user's that nobody else can enter; else its own."""
    given = environ.get(DOWNLOADS_ENV)
    if given:
        try:
            info = os.lstat(given)
            private = stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o077
            if private: return Path(given)
        except OSError: pass
    global _own_downloads
    if _own_downloads is None:
        _own_downloads = Path(tempfile.mkdtemp(prefix='fastwatch-downloads-'))
        atexit.register(shutil.rmtree, _own_downloads, ignore_errors=True)
    return _own_downloads


def _short(text: str, limit: int = 80) -> str:
    "A viewer's value as messages repeat it: printable, at most `limit` characters."
    text = ''.join(c if c.isprintable() else '?' for c in text)
    return repr(text if len(text) <= limit else text[:limit - 1] + '…')


def _opened(location: Path | None, name: str) -> Store:
    """The store at `location` (None: the served store), read-only, its errors naming it `name` as the viewer knows
    it: no server path, and not the tables of a database that is not a store."""
    try: store = open_store(location, readonly=True)
    except StoreError as e:
        where = str(location) if location is not None else display_location(None)
        message = str(e).replace(where, name)
        if ' (it has tables' in message: message = f'{name} is not a fastwatch store (another program\'s database)'
        raise StoreError(message) from None
    store.location = name  # what its messages call it (`no run X in NAME`)
    return store


def _discard(path: Path) -> None:
    "Delete a downloaded store, and the `-wal` and `-shm` files SQLite made beside it."
    for name in (path.name, f'{path.name}-wal', f'{path.name}-shm'): (path.parent / name).unlink(missing_ok=True)


def _remote(url: str) -> Store:
    "A store fetched from an https URL into this kernel's downloads folder, deleted when the kernel exits."
    path = fetch(url, downloads_dir(), max_bytes=MAX_DOWNLOAD, timeout=REMOTE_TIMEOUT).path
    try:
        if not is_sqlite(path): raise StoreError(f'{shown(url)} is not a fastwatch store (not SQLite)')
        store = _opened(path, shown(url))
    except StoreError:
        _discard(path)
        raise
    atexit.register(_discard, path)
    return store


def open_view_store(store: str | None = None) -> Store:
    "The store a page names (read-only): the served store when None, a path inside the served folder, or an https URL."
    if store is None: return _opened(None, 'the served store')
    if '://' in store or SCHEME.match(store):
        if not store.lower().startswith('https://'):
            raise StoreError(f'store= takes a path inside the served folder or an https URL, not {_short(store)}')
        if is_published(store): return follow(store, downloads_dir())  # a published run: followed live
        return _remote(store)
    root = store_root()
    if root is None:
        raise StoreError('this server shows only its own store: store= needs fastwatch serve --root FOLDER')
    path = (root / store).resolve()
    if not path.is_relative_to(root):
        raise StoreError(f'store= must name a file inside the served folder, not {_short(store)}')
    if not path.is_file():
        available = store_files(root)
        raise StoreError(f'no store file {_short(store)} in the served folder; '
                         + (f"stores: {', '.join(available)}" if available else 'it has no store files'))
    if not is_sqlite(path): raise StoreError(f'{_short(store)} is not a fastwatch store (not SQLite)')
    return _opened(path, _short(store))
