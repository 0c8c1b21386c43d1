"""What a dashboard page asks for: its query string (`?run=ID&store=WHERE`, sent by Voila to a preheated kernel),
and the store it opens.

`store` is a path inside the served folder, or an https URL of a store file (fetched read-only, with a size limit,
and checked to be a fastwatch store before it is opened); without it the page opens the served store.
Every store is opened read-only: a viewer can change nothing.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import tempfile
import threading
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import parse_qs

from ..errors import StoreError
from ..store import Store, open_store

PARAMETERS = ('run', 'store')
VOILA_PARAMETERS = ('token', 'template', 'theme')  # Voila's own, not the dashboard's
MAX_DOWNLOAD = 256 * 2**20
SQLITE_MAGIC = b'SQLite format 3\x00'


class QueryError(ValueError):
    "A query string the dashboard cannot follow; the message says what it takes."


def parse_query(query: str | None) -> dict[str, str]:
    "`run` and `store` from a page's query string; `QueryError` for anything else."
    params = parse_qs(query or '', keep_blank_values=True)
    unknown = sorted(set(params) - set(PARAMETERS) - set(VOILA_PARAMETERS))
    if unknown: raise QueryError(f"unknown parameter {', '.join(unknown)}: the dashboard takes run= and store=")
    found = {}
    for key in PARAMETERS:
        values = params.get(key, [])
        if len(values) > 1: raise QueryError(f'{key}= is given {len(values)} times: give it once')
        if values and not values[0].strip(): raise QueryError(f'{key}= is empty')
        if values: found[key] = values[0].strip()
    return found


def _request_info(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The page's request (its query string, host, ...) as Voila sends it to the preheated kernel a page takes:
    `voila.utils.wait_for_request` without importing voila, which brings the Jupyter server (40 MB) into the kernel."""
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


def page_query() -> str:
    "The page's query string. A preheated Voila kernel waits here for the page's request."
    if os.environ.get('VOILA_PREHEAT') == 'True': os.environ.update(_request_info())
    return os.environ.get('QUERY_STRING', '')


def served_root() -> Path:
    "The folder whose stores a page may open: `$FASTWATCH_ROOT` (set by `fastwatch serve`), else the repository."
    # On Binder, repo2docker sets REPO_DIR to the repository, while the kernel runs in the notebook's folder.
    return Path(os.environ.get('FASTWATCH_ROOT') or os.environ.get('REPO_DIR') or os.getcwd()).resolve()


def store_files(root: Path | None = None, limit: int = 20) -> list[str]:
    "Store files a page could open (`*.fastwatch`, `*.db`) in the served folder and its `runs/`, for messages."
    root = root or served_root()
    found = [p for pattern in ('*.fastwatch', '*.db', 'runs/*.fastwatch', 'runs/*.db') for p in root.glob(pattern)]
    return sorted(str(p.relative_to(root)) for p in found)[:limit]


def fetch_store(url: str, dest: Path, limit: int = MAX_DOWNLOAD, timeout: float = 30) -> Path:
    "Download a store file to `dest`, refusing more than `limit` bytes and files that are not SQLite databases."
    with urllib.request.urlopen(url, timeout=timeout) as response:
        size = int(response.headers.get('Content-Length') or 0)
        if size > limit: raise StoreError(f'{url} is {size / 2**20:.0f} MB, more than the {limit / 2**20:.0f} MB limit')
        data = response.read(limit + 1)
    if len(data) > limit: raise StoreError(f'{url} is more than the {limit / 2**20:.0f} MB limit')
    if not data.startswith(SQLITE_MAGIC): raise StoreError(f'{url} is not a fastwatch store (not SQLite)')
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_suffix('.part')
    part.write_bytes(data)
    part.replace(dest)
    return dest


def open_view_store(store: str | None = None) -> Store:
    "The store a page names (read-only): the served store when None, a path inside the served folder, or an https URL."
    if store is None: return open_store(readonly=True)
    if store.startswith('https://'):
        name = hashlib.sha256(store.encode()).hexdigest()[:16] + '.fastwatch'
        try: path = fetch_store(store, Path(tempfile.gettempdir()) / 'fastwatch-remote' / name)
        except StoreError: raise
        except Exception as e: raise StoreError(f'cannot fetch {store}: {e}') from e
        return open_store(path, readonly=True)
    if '://' in store: raise StoreError(f'store= takes a path inside the served folder or an https URL, not {store!r}')
    root = served_root()
    path = (root / store).resolve()
    if not path.is_relative_to(root): raise StoreError(f'store= must name a file inside the served folder: {store!r}')
    if not path.is_file():
        available = store_files(root)
        raise StoreError(f'no store file {store!r} in the served folder; '
                         + (f"stores: {', '.join(available)}" if available else 'it has no store files'))
    with path.open('rb') as f:
        if f.read(len(SQLITE_MAGIC)) != SQLITE_MAGIC: raise StoreError(f'{store} is not a fastwatch store (not SQLite)')
    return open_store(path, readonly=True)
