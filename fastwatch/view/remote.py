"""Following a published run (`fastwatch publish`, `WatchCallback(publish=…)`) from its https URL.

A `Follower` mirrors the run into a store file of its own in the kernel's private downloads folder: it polls the
run's `index.json` with conditional GETs (If-None-Match, else If-Modified-Since), fetches only the segments it has
not seen, and copies their rows in. The dashboard reads the mirror through a `FollowedStore`, so its usual feed and
follow loop stream the run like a local live one; a run whose publisher stopped publishing is `stale`, not `live`,
and each run carries `published_age`: how old the newest published data is.
"""
from __future__ import annotations

import json
import re
import secrets
import threading
import time
from pathlib import Path

from sqlalchemy import select

from ..errors import StoreError
from ..store import Store, open_store, schema
from ..store.schema import runs
from .fetch import fetch, shown

INDEX = 'index.json'
FORMAT = 'fastwatch published run'  # as `fastwatch.share.publish` writes it
MAX_INDEX = 2**20
MAX_SEGMENT = 256 * 2**20
MAX_MIRROR = 2**30  # bytes of segments one follower fetches in all
TIMEOUT = 30.0  # seconds for one download
LIFETIME = 3600.0  # a follower stops after this long, like the dashboard's follow loop
RECHECK_EVERY = 10  # every so many polls the index is fetched unconditionally: Last-Modified has 1 s resolution
SQLITE_MAGIC = b'SQLite format 3\x00'
RUN_ID = re.compile(r'[A-Za-z0-9_-]{1,64}')


def is_published(url: str) -> bool:
    "Whether an https URL names a published run: its folder (ending in /) or its index.json."
    path = url.split('?', 1)[0].split('#', 1)[0]
    return path.endswith('/') or path.endswith('/' + INDEX)


def stale_after(every: float) -> float:
    "Seconds without a new upload after which a running run's publisher counts as stopped."
    return 2 * every + 20


class Follower:
    "Keeps a mirror of the run published at `url` up to date, from a thread, until the run ends (or `LIFETIME`)."

    def __init__(self, url: str, dest_dir: str | Path):
        self.url, self.shown = url, shown(url)
        self.base = url.split('?', 1)[0].removesuffix(INDEX)
        self.dest_dir = Path(dest_dir)
        self.path = self.dest_dir / f'followed-{secrets.token_hex(8)}.fastwatch'
        self.index: dict | None = None
        self.applied, self.fetched_bytes, self.polls, self.error = 0, 0, 0, None
        self._etag = self._last_modified = None
        self._mirror = open_store(self.path)
        self._stop = threading.Event()
        try: self.sync()  # the first sync in the caller's thread: a URL that is no published run fails here
        except BaseException:
            self._mirror.close()
            for suffix in ('', '-wal', '-shm'): Path(f'{self.path}{suffix}').unlink(missing_ok=True)
            raise
        self._thread = threading.Thread(target=self._loop, name='fastwatch-follow', daemon=True)
        self._thread.start()

    @property
    def run_id(self) -> str: return self.index['run_id']

    @property
    def every(self) -> float: return float(self.index.get('every') or 30)

    @property
    def ended(self) -> bool:
        "Whether the publisher published the run's end, and every segment is here."
        return self.index['status'] != 'running' and self.applied >= self.index['segments']

    def age(self, now: float | None = None) -> float:
        "Seconds since the newest published data was published."
        return max(0.0, (now or time.time()) - float(self.index.get('published_at') or 0))

    def fresh(self, now: float | None = None) -> bool:
        "Whether the publisher is still publishing (its last upload is recent enough)."
        return self.age(now) <= stale_after(self.every)

    # --- polling --------------------------------------------------------------------------------------------
    def sync(self) -> bool:
        "Fetch the index if it changed and the segments it names that are not here yet; True if anything came."
        self.polls += 1
        recheck = self.polls % RECHECK_EVERY == 0
        etag = None if recheck else self._etag
        last_modified = None if recheck or self._etag else self._last_modified
        result = fetch(self.base + INDEX, self.dest_dir, max_bytes=MAX_INDEX, timeout=TIMEOUT, etag=etag,
                       last_modified=last_modified)
        if result.path is None and self.applied >= (self.index or {}).get('segments', 0): return False
        if result.path is not None:
            try: index = json.loads(result.path.read_bytes())
            except ValueError: raise StoreError(f'{self.shown} is not a published fastwatch run') from None
            finally: result.path.unlink()
            self._check(index)
            self.index, self._etag, self._last_modified = index, result.etag, result.last_modified
        while self.applied < self.index['segments']: self._apply(self.applied + 1)
        return True

    def _check(self, index) -> None:
        "A published run's index, or `StoreError`."
        if not (isinstance(index, dict) and index.get('format') == FORMAT and isinstance(index.get('segments'), int)
                and isinstance(index.get('run_id'), str) and RUN_ID.fullmatch(index['run_id'])):
            raise StoreError(f'{self.shown} is not a published fastwatch run')
        if self.index is not None and (index['run_id'] != self.run_id or index['segments'] < self.applied):
            raise StoreError(f'{self.shown} now publishes another run')

    def _apply(self, number: int) -> None:
        "Fetch segment `number` and copy its rows of the run into the mirror, in one transaction."
        if self.fetched_bytes > MAX_MIRROR: raise StoreError(f'{self.shown} is larger than {MAX_MIRROR >> 20} MB')
        path = fetch(f'{self.base}{number:08d}.fastwatch', self.dest_dir, max_bytes=MAX_SEGMENT,
                     timeout=TIMEOUT).path
        try:
            self.fetched_bytes += path.stat().st_size
            with path.open('rb') as f:
                if f.read(len(SQLITE_MAGIC)) != SQLITE_MAGIC:
                    raise StoreError(f'segment {number} of {self.shown} is not a fastwatch store')
            segment = open_store(path, readonly=True)
            try:
                with segment.engine.connect() as src, self._mirror.engine.begin() as out:
                    for table in (runs, *schema.RUN_TABLES):
                        key = table.c.id if table is runs else table.c.run_id
                        rows = [row._mapping for row in src.execute(select(table).where(key == self.run_id))]
                        if rows: out.execute(table.insert().prefix_with('OR REPLACE'), rows)
            finally: segment.close()
        finally: path.unlink(missing_ok=True)
        self.applied = number

    def _loop(self) -> None:
        started = time.monotonic()
        while not self.ended and time.monotonic() - started < LIFETIME:
            if self._stop.wait(min(2.0, max(0.5, self.every / 2))): return
            try:
                self.sync()
                self.error = None
            except StoreError as e: self.error = str(e)  # kept for the page; the next poll tries again

    def store(self) -> FollowedStore:
        "The mirror, read-only, as the dashboard reads it."
        mirror = open_store(self.path, readonly=True)
        return FollowedStore(mirror.engine, self.shown, self)

    def close(self) -> None:
        "Stop following and release the mirror (its file stays until the kernel's downloads folder goes)."
        self._stop.set()
        self._mirror.close()


class FollowedStore(Store):
    """A published run's mirror: a store whose running run is `live` while its publisher publishes and `stale`
    when it stopped, each run with `published_age` (s) and the published URL as `published_url`."""

    def __init__(self, engine, location: str, follower: Follower):
        super().__init__(engine, location)
        self.follower, self.published_url = follower, follower.url

    def _followed(self, run: dict) -> dict:
        now = time.time()
        if run['status'] == 'running': run['state'] = 'live' if self.follower.fresh(now) else 'stale'
        run['published_age'] = self.follower.age(now)
        return run

    def runs(self) -> list[dict]:
        return [self._followed(run) for run in super().runs()]

    def run(self, run_id: str) -> dict:
        return self._followed(super().run(run_id))

    def close(self) -> None:
        super().close()
        self.follower.close()


def follow(url: str, dest_dir: str | Path) -> FollowedStore:
    "The run published at the https `url` (its folder or index.json), mirrored under `dest_dir` and kept up to date."
    follower = Follower(url, dest_dir)
    return follower.store()
