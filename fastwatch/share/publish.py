"""Publishing a run to storage its followers can read: any fsspec URL (`s3://`, `gs://`, `hf://datasets/…`,
`webdav+https://…` through webdav4, or a local folder that a web server serves).

The published form of run RUN is the folder `TARGET/RUN/` (the run id's 64 random bits make its URL unguessable):
append-only segments `00000001.fastwatch`, `00000002.fastwatch`, … each an ordinary store file holding the rows
recorded since the previous one (and the run's row as it is now), and `index.json`, which says how many segments
there are and where the publisher's cursors stand. Every file is written whole before a reader can see it (a put,
or a put under a temporary name and a move), and a segment before the index that names it. What a tick uploads
grows with what is new, not with the run.

`Publisher` does one run; the callback runs it in the writer thread (`after_write`), `fastwatch publish` in a loop.
"""
from __future__ import annotations

import json
import secrets
import sqlite3
import tempfile
import time
import warnings
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy import select

from ..errors import UsageError
from ..store import open_store, schema, store_url
from ..store.schema import batch_blocks, runs
from .links import follow_links

DEFAULT_EVERY = 30.0
MIN_EVERY = 1.0
# Each tick is two files; on a Hugging Face repo each is a commit, and a repo takes at most 128 commits an hour.
HF_MIN_EVERY = 60.0
INDEX = 'index.json'
FORMAT = 'fastwatch published run'
FORMAT_VERSION = 1
SEGMENT_PAGE_SIZE = 1024  # an empty store is 14 KB with 1 KB pages, 45 KB with SQLite's default 4 KB
# Filesystems whose put is atomic (an object appears whole or not at all): no temporary name and move.
ATOMIC_PUT = ('s3', 's3a', 'gs', 'gcs', 'hf', 'az', 'abfs', 'adl', 'memory')
# The tables a segment takes rows of, with the column whose last published value is the cursor.
CURSORS = {'batches': 'step', 'epochs': 'epoch', 'confusion': 'epoch', 'top_losses': 'epoch', 'alerts': 'seq'}
FINAL = ('finished', 'failed', 'interrupted')


def segment_name(number: int) -> str:
    "The file name of the `number`th segment (from 1)."
    return f'{number:08d}.fastwatch'


def min_every(target: str) -> float:
    "The shortest interval between uploads to `target`."
    return HF_MIN_EVERY if target.startswith('hf://') else MIN_EVERY


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
    "Fail with a one-line `UsageError` for a target fsspec cannot write to here, or an interval that is no number."
    if not isinstance(target, str) or not target.strip() or '\n' in target:
        raise UsageError(f'publish takes an fsspec URL or a folder, not {target!r}')
    if not isinstance(every, (int, float)) or not every > 0:
        raise UsageError(f'publish_every must be a positive number of seconds, not {every!r}')
    import fsspec
    scheme = urlsplit(target).scheme if '://' in target else 'file'
    protocol = 'webdav' if scheme.startswith('webdav+') else scheme
    try: fsspec.get_filesystem_class(protocol)
    except (ValueError, ImportError) as e:
        raise UsageError(f'cannot publish to {scheme}://: {str(e).splitlines()[0]}') from None


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


def _new_segment(path: Path):
    "An empty store at `path` with small pages: a segment of a few rows stays a few KB."
    with sqlite3.connect(path) as conn:
        conn.execute(f'PRAGMA page_size={SEGMENT_PAGE_SIZE}')
        conn.execute('VACUUM')
    conn.close()
    return open_store(path)


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
        self.cursors: dict = {**{name: -1 for name in CURSORS}, 'batch_blocks': [-1] * schema.BLOCK_LEVELS}
        self.segments, self.done = 0, False
        self.uploads: list[int] = []  # bytes uploaded by each tick that uploaded
        self._fs = self._root = self._store = None
        self._last_upload, self._retry_at, self._failures, self._published_run = float('-inf'), 0.0, 0, None

    # --- when -----------------------------------------------------------------------------------------------
    def after_write(self, rows: dict, updates: dict) -> None:
        "The writer's hook: publish when due, at once (within `min_every`) at an epoch's end, and at the run's."
        ended = updates.get(self.run_id, {}).get('status') in FINAL
        epoch_end = any(row['run_id'] == self.run_id for row in rows.get('epochs', ()))
        self.tick(urgent=epoch_end, force=ended)

    def tick(self, urgent: bool = False, force: bool = False) -> bool:
        """Upload what is new if it is due (every `every` s; `urgent`: `min_every` s after the last upload; `force`:
        now), or retry a failed upload when its backoff has passed. True when something was uploaded."""
        if self.done: return False
        now = time.monotonic()
        if self._failures: due = now >= self._retry_at
        else: due = force or now - self._last_upload >= (self.min_every if urgent else self.every)
        if not due: return False
        try: uploaded = self.publish()
        except Exception as e:
            self._fail(e)
            return False
        self._failures, self._last_upload = 0, now
        return uploaded

    def _fail(self, error: Exception) -> None:
        self._failures += 1
        self._retry_at = time.monotonic() + min(self.every, 0.5 * 2 ** self._failures)
        if self._failures == 1:
            message = ' '.join(str(error).split())[:200] or type(error).__name__
            warnings.warn(f'fastwatch: cannot publish run {self.run_id} to {self.target}: {message}. Training goes '
                          'on; the upload is retried and catches up.', RuntimeWarning)

    # --- what -----------------------------------------------------------------------------------------------
    def publish(self) -> bool:
        "Upload a segment with what is new since the last one, then the index; True if there was anything new."
        if self._store is None: self._store = open_store(self.store_location, readonly=True)
        if self._fs is None: self._open_target()
        rows, cursors = self._new_rows()
        run = rows['runs'][0]
        if run == self._published_run and not any(rows[name] for name in rows if name != 'runs'):
            return False
        with tempfile.TemporaryDirectory(prefix='fastwatch-publish-') as tmp:
            segment = Path(tmp) / segment_name(self.segments + 1)
            store = _new_segment(segment)
            try:
                store.write(rows)
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
        if run['status'] in FINAL: self.done = True
        return True

    def _new_rows(self) -> tuple[dict[str, list], dict]:
        "The run's row and every row after the cursors, with the cursors after them."
        cursors = json.loads(json.dumps(self.cursors))
        with self._store.engine.connect() as conn:
            # The run's row first: when it says the run ended, every row of the run is already committed.
            found = conn.execute(select(runs).where(runs.c.id == self.run_id)).one_or_none()
            if found is None: raise UsageError(f'no run {self.run_id} in {self._store.location}')
            rows = {'runs': [dict(found._mapping)]}
            for name, column in CURSORS.items():
                table = schema.metadata.tables[name]
                query = (select(table).where(table.c.run_id == self.run_id, table.c[column] > cursors[name])
                         .order_by(table.c[column]))
                rows[name] = [dict(row._mapping) for row in conn.execute(query)]
                if rows[name]: cursors[name] = rows[name][-1][column]
            rows['batch_blocks'] = []
            for level in range(schema.BLOCK_LEVELS):
                query = (select(batch_blocks).where(batch_blocks.c.run_id == self.run_id, batch_blocks.c.level == level,
                                                    batch_blocks.c.block > cursors['batch_blocks'][level])
                         .order_by(batch_blocks.c.block))
                found = [dict(row._mapping) for row in conn.execute(query)]
                if found: cursors['batch_blocks'][level] = found[-1]['block']
                rows['batch_blocks'] += found
        return rows, cursors

    # --- where ----------------------------------------------------------------------------------------------
    def _open_target(self) -> None:
        "The target's filesystem, and where a publisher of this run stopped (a restart continues from there)."
        fs, root = open_target(self.target)
        root = f'{root}/{self.run_id}'
        if fs.exists(f'{root}/{INDEX}'):
            index = json.loads(fs.cat_file(f'{root}/{INDEX}'))
            if index.get('format') == FORMAT and index.get('run_id') == self.run_id:
                self.segments, self.cursors = index['segments'], index['cursors']
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


def publish(run: str,  # The run to publish
            to: str = None,  # Where: an fsspec URL (s3://, gs://, hf://datasets/…, webdav+https://…) or a folder
            every: float = DEFAULT_EVERY,  # Seconds between uploads while the run is live
            url: str = None,  # The https URL at which `to` is served, when fastwatch cannot tell (a local folder)
            store: str = None,  # Store path or URL to read the run from (default: $FASTWATCH_STORE, ./fastwatch.db)
            ) -> None:
    "Publish a run for followers (Binder, any fastwatch serve) until it ends; Ctrl-C stops."
    if not to: raise UsageError('give where to publish: --to URL (s3://…, hf://datasets/…, a folder, …)')
    source = open_store(store, readonly=True)
    try: state = source.run(run)['state']
    finally: source.close()
    publisher = Publisher(store, run, to, every, url)
    print(f'fastwatch: publishing run {run} to {to.rstrip("/")}/{run}/ every {publisher.every:g} s')
    print(publisher.links or f'serve {to} over https, then open the dashboard with ?store=https://…/{run}/')
    try:
        while True:
            publisher.tick(force=state != 'live')
            if publisher.done or (state != 'live' and not publisher._failures): break
            time.sleep(min(1.0, publisher.every))
            state = publisher._store.run(run)['state']
    except KeyboardInterrupt: pass
    finally: publisher.close()
    print(f'fastwatch: published {publisher.segments} segments of run {run}')
