"""The publish protocol, both halves: `Publisher` puts a run where its followers can read it (any fsspec URL:
`s3://`, `gs://`, `hf://datasets/…`, `webdav+https://…` through webdav4, or a local folder a web server serves),
and `Follower` mirrors it from its https URL.

The published form of run RUN is the folder `TARGET/RUN/` (the run id's 64 random bits make its URL unguessable):
append-only segments `00000001.fastwatch`, `00000002.fastwatch`, … each an ordinary store file holding the run's
record as it is now and its rows of every run table (`store.tables.RUN_TABLES`) after the previous segment's
cursors, and `index.json`, which says how many segments there are and where the publisher's cursors stand. Every
file is written whole before a reader can see it (a put, or a put under a temporary name and a move), and a segment
before the index that names it. What an upload holds grows with what is new, not with the run.

A publisher's `tick` does network work: the recording process runs it on a thread of its own, never the store
writer's (`record/network.py`); `fastwatch publish` in a loop. A follower polls on a thread of its own too.
"""
from __future__ import annotations

import json
import secrets
import sqlite3
import tempfile
import threading
import time
import warnings
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import FetchError, PublishError, StoreError
from ..links import follow_links
from ..store import Store, open_store, store_url
from ..store.files import is_sqlite
from ..store.records import ENDED, RUN_ID, RUNNING
from ..store.store import RUNS
from .fetch import fetch, shown

INDEX = 'index.json'
FORMAT = 'fastwatch published run'
FORMAT_VERSION = 2  # 2: cursors by table name, one value each
DEFAULT_EVERY = 30.0  # seconds between uploads while a run is live
MIN_EVERY = 1.0
# Each tick is two files; on a Hugging Face repo each is a commit, and a repo takes at most 128 commits an hour.
HF_MIN_EVERY = 60.0
SEGMENT_PAGE_SIZE = 1024  # SQLite's page size for segments: a segment of a few rows stays a few KB
# Filesystems whose put is atomic (an object appears whole or not at all): no temporary name and move.
ATOMIC_PUT = ('s3', 's3a', 'gs', 'gcs', 'hf', 'az', 'abfs', 'adl', 'memory')
# What a follower accepts and how often it looks.
MAX_INDEX = 2**20
MAX_SEGMENT = 256 * 2**20
MAX_MIRROR = 2**30  # bytes of segments one follower fetches in all
TIMEOUT = 30.0  # seconds for one download
LIFETIME = 3600.0  # a follower stops after this long, like the dashboard's follow loop
RECHECK_EVERY = 10  # every so many polls the index is fetched unconditionally: Last-Modified has 1 s resolution


def segment_name(number: int) -> str:
    "The file name of the `number`th segment (from 1)."
    return f'{number:08d}.fastwatch'


def min_every(target: str) -> float:
    "The shortest interval between uploads to `target`."
    return HF_MIN_EVERY if target.startswith('hf://') else MIN_EVERY


def stale_after(every: float) -> float:
    "Seconds without a new upload after which a running run's publisher counts as stopped."
    return 2 * every + 20


def is_published(url: str) -> bool:
    "Whether an https URL names a published run: its folder (ending in /) or its index.json."
    path = url.split('?', 1)[0].split('#', 1)[0]
    return path.endswith('/') or path.endswith('/' + INDEX)


def public_url(target: str, run_id: str) -> str | None:
    """The https URL at which the run published to `target` can be read, for the storage whose public URL fastwatch
    knows (S3, Google Cloud Storage, a Hugging Face repo, WebDAV over https); None for others (a local folder)."""
    parts = urlsplit(target.rstrip('/'))
    scheme, host, path = parts.scheme, parts.hostname or '', parts.path.strip('/')
    key = '/'.join(p for p in (path, run_id) if p) + '/'
    if scheme in ('s3', 's3a'): return f'https://{host}.s3.amazonaws.com/{key}'
    if scheme in ('gs', 'gcs'): return f'https://storage.googleapis.com/{host}/{key}'
    if scheme == 'hf':  # hf://datasets/USER/REPO[@REVISION]/PATH
        kind, rest = host, path.split('/')
        if len(rest) < 2: return None
        user, repo, inside = rest[0], rest[1], '/'.join([*rest[2:], run_id])
        repo, _, revision = repo.partition('@')
        prefix = '' if kind == 'models' else f'{kind}/'
        return f'https://huggingface.co/{prefix}{user}/{repo}/resolve/{revision or "main"}/{inside}/'
    if scheme == 'webdav+https': return f'https://{parts.netloc.rpartition("@")[2]}/{key}'
    return None


def check_target(target: str, every: float = DEFAULT_EVERY) -> None:
    "Fail with a one-line `PublishError` for a target fsspec cannot write to here, or an interval that is no number."
    if not isinstance(target, str) or not target.strip() or '\n' in target:
        raise PublishError(f'publish takes an fsspec URL or a folder, not {target!r}')
    if not isinstance(every, (int, float)) or not every > 0:
        raise PublishError(f'publish_every must be a positive number of seconds, not {every!r}')
    import fsspec
    scheme = urlsplit(target).scheme if '://' in target else 'file'
    protocol = 'webdav' if scheme.startswith('webdav+') else scheme
    try: fsspec.get_filesystem_class(protocol)
    except (ValueError, ImportError) as e:
        raise PublishError(f'cannot publish to {scheme}://: {str(e).splitlines()[0]}') from None


def open_target(target: str):
    """The fsspec filesystem and root path of `target`. `webdav+https://[USER:PASSWORD@]HOST/PATH` (or
    `webdav+http://`) is a WebDAV server through webdav4; any other URL goes to fsspec as it is."""
    import fsspec
    parts = urlsplit(target)
    if parts.scheme in ('webdav+https', 'webdav+http'):
        auth = (parts.username, parts.password or '') if parts.username else None
        base = f"{parts.scheme.split('+')[1]}://{parts.netloc.rpartition('@')[2]}"
        return fsspec.filesystem('webdav', base_url=base, auth=auth), parts.path.rstrip('/') or '/'
    fs, root = fsspec.core.url_to_fs(target)
    return fs, root.rstrip('/')


def _new_segment(path: Path) -> Store:
    "An empty store at `path` with small pages."
    with sqlite3.connect(path) as conn:
        conn.execute(f'PRAGMA page_size={SEGMENT_PAGE_SIZE}')
        conn.execute('VACUUM')
    conn.close()
    return open_store(path)


# --- the publishing half ------------------------------------------------------------------------------------
class Publisher:
    """Publishes run `run_id` of the store at `store` (a path or SQLAlchemy URL) to `target`/RUN/: `tick()` uploads
    what is new when it is due. A failing upload is one warning and is retried (with backoff) on later ticks;
    nothing is lost meanwhile, as each segment holds everything since the last one that was uploaded."""

    def __init__(self, store: str, run_id: str, target: str, every: float = DEFAULT_EVERY,
                 url: str | None = None):
        check_target(target, every)
        self.store_location, self.run_id, self.target = store_url(store), run_id, target
        self.min_every = min_every(target)
        self.every = max(float(every), self.min_every)
        self.url = url.rstrip('/') + f'/{run_id}/' if url else public_url(target, run_id)
        self.links = follow_links(self.url, run_id) if self.url else None
        self.cursors: dict = {}
        self.segments, self.done, self.failures = 0, False, 0
        self.uploads: list[int] = []  # bytes uploaded by each tick that uploaded
        self._fs = self._root = self._store = None
        self._last_upload, self._retry_at, self._published_run = float('-inf'), 0.0, None

    def due(self, urgent: bool = False, last: bool = False) -> bool:
        """Whether `tick` would upload now: every `every` s; `urgent` (an epoch ended): `min_every` s after the last
        upload; `last` (the run ended, and nothing more will come): now; after a failure, once its backoff passed."""
        if self.done: return False
        now = time.monotonic()
        if self.failures: return now >= self._retry_at
        return last or now - self._last_upload >= (self.min_every if urgent else self.every)

    def tick(self, urgent: bool = False, last: bool = False) -> bool:
        "Upload what is new if it is due (`due`); `last`: and be done once the run's end is uploaded."
        if not self.due(urgent, last): return False
        try: uploaded = self.publish(last)
        except Exception as e:
            self._fail(e)
            return False
        self.failures, self._last_upload = 0, time.monotonic()
        return uploaded

    def _fail(self, error: Exception) -> None:
        self.failures += 1
        self._retry_at = time.monotonic() + min(self.every, 0.5 * 2 ** self.failures)
        if self.failures == 1:
            message = ' '.join(str(error).split())[:200] or type(error).__name__
            warnings.warn(f'fastwatch: cannot publish run {self.run_id} to {self.target}: {message}. Training goes '
                          'on; the upload is retried and catches up.', RuntimeWarning)

    def publish(self, last: bool = False) -> bool:
        """Upload a segment with what is new since the last one, then the index; True if there was anything new.
        `last`: the publisher is done once the run's end is published."""
        if self._store is None: self._store = open_store(self.store_location, readonly=True)
        if self._fs is None: self._open_target()
        rows, cursors = self._store.rows_after(self.run_id, self.cursors)
        run = rows[RUNS][0]
        new = run != self._published_run or any(rows[name] for name in rows if name != RUNS)
        if new: self._upload(rows, cursors)
        if last and run['status'] in ENDED: self.done = True
        return new

    def _upload(self, rows: dict[str, list[dict]], cursors: dict) -> None:
        "A segment of `rows`, then the index that names it and the cursors after it."
        run = rows[RUNS][0]
        with tempfile.TemporaryDirectory(prefix='fastwatch-publish-') as tmp:
            segment = Path(tmp) / segment_name(self.segments + 1)
            store = _new_segment(segment)
            try:
                store.put(rows)
                with store.engine.connect() as conn: conn.exec_driver_sql('PRAGMA journal_mode=DELETE')
            finally: store.close()
            index = Path(tmp) / INDEX
            index.write_text(json.dumps({
                'format': FORMAT, 'version': FORMAT_VERSION, 'run_id': self.run_id, 'name': run['name'],
                'status': run['status'], 'segments': self.segments + 1, 'cursors': cursors,
                'published_at': time.time(), 'every': self.every}))
            self._put(segment)
            self._put(index)
            self.uploads.append(segment.stat().st_size + index.stat().st_size)
        self.segments, self.cursors, self._published_run = self.segments + 1, cursors, run

    def _open_target(self) -> None:
        "The target's filesystem, and where a publisher of this run stopped (a restart continues from there)."
        fs, root = open_target(self.target)
        root = f'{root}/{self.run_id}'
        if fs.exists(f'{root}/{INDEX}'):
            index = json.loads(fs.cat_file(f'{root}/{INDEX}'))
            if index.get('format') == FORMAT and index.get('run_id') == self.run_id:
                self.segments = index['segments']
                # An index of another version holds cursors of another form: the next segment holds everything.
                if index.get('version') == FORMAT_VERSION: self.cursors = index['cursors']
        else: fs.makedirs(root, exist_ok=True)
        self._fs, self._root = fs, root

    def _put(self, local: Path) -> None:
        "Upload a file whole: readers see the old file or the new one, never a part."
        final = f'{self._root}/{local.name}'
        protocol = self._fs.protocol if isinstance(self._fs.protocol, str) else self._fs.protocol[0]
        if protocol in ATOMIC_PUT:
            self._fs.put_file(str(local), final)
            return
        partial = f'{self._root}/.{local.name}.{secrets.token_hex(4)}.partial'
        self._fs.put_file(str(local), partial)
        client = getattr(self._fs, 'client', None)
        if protocol in ('webdav', 'dav'): client.move(partial, final, overwrite=True)  # fsspec's mv copies
        else: self._fs.mv(partial, final)

    def close(self) -> None:
        "Release the store's connections."
        if self._store is not None: self._store.close()


# --- the following half -------------------------------------------------------------------------------------
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
    def every(self) -> float: return float(self.index.get('every') or DEFAULT_EVERY)

    @property
    def ended(self) -> bool:
        "Whether the publisher published the run's end, and every segment is here."
        return self.index['status'] != RUNNING and self.applied >= self.index['segments']

    def age(self, now: float | None = None) -> float:
        "Seconds since the newest published data was published."
        return max(0.0, (now or time.time()) - float(self.index.get('published_at') or 0))

    def fresh(self, now: float | None = None) -> bool:
        "Whether the publisher is still publishing (its last upload is recent enough)."
        return self.age(now) <= stale_after(self.every)

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
        path = fetch(f'{self.base}{segment_name(number)}', self.dest_dir, max_bytes=MAX_SEGMENT,
                     timeout=TIMEOUT).path
        try:
            self.fetched_bytes += path.stat().st_size
            if not is_sqlite(path): raise StoreError(f'segment {number} of {self.shown} is not a fastwatch store')
            segment = open_store(path, readonly=True)
            try: rows, _ = segment.rows_after(self.run_id, {})
            finally: segment.close()
            self._mirror.put(rows, replace=True)
        finally: path.unlink(missing_ok=True)
        self.applied = number

    def _loop(self) -> None:
        started = time.monotonic()
        while not self.ended and time.monotonic() - started < LIFETIME:
            if self._stop.wait(min(2.0, max(0.5, self.every / 2))): return
            try:
                self.sync()
                self.error = None
            except (StoreError, FetchError) as e: self.error = str(e)  # kept for the page; the next poll tries again

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

    def _followed(self, run):
        now = time.time()
        if run.status == RUNNING: run.state = 'live' if self.follower.fresh(now) else 'stale'
        run.published_age = self.follower.age(now)
        return run

    def runs(self):
        return [self._followed(run) for run in super().runs()]

    def run(self, run_id: str):
        return self._followed(super().run(run_id))

    def close(self) -> None:
        super().close()
        self.follower.close()


def follow(url: str, dest_dir: str | Path) -> FollowedStore:
    "The run published at the https `url` (its folder or index.json), mirrored under `dest_dir` and kept up to date."
    return Follower(url, dest_dir).store()
