"""Hostile and broken input: remote stores that misbehave, store files that are not stores, query strings that reach
out of the served folder, and fuzzing (hypothesis) of the query parser, the store reader and `fastwatch import`.

Each is refused with one line that names no server path and repeats nothing a remote server sent, in bounded time and
memory, and changes no file."""
from __future__ import annotations

import functools
import html
import os
import random
import shutil
import sqlite3
import stat
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import pytest
from browser import https_server, self_signed_certificate
from helpers import add_empty_run, changes, cli, hashes, send
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastwatch.errors import FastwatchError, FetchError, QueryError, StoreError
from fastwatch.remote.fetch import fetch
from fastwatch.store import open_store
from fastwatch.store.runs_table import run_summaries
from fastwatch.store.schema import SCHEMA_VERSION
from fastwatch.store.tables import BatchRow
from fastwatch.view.dashboard import dashboard
from fastwatch.view.page import parse_query

SECRET = 'internal-answer-7f3a'  # what a remote server says: no message may repeat it
COUNTED: dict[str, int] = {}  # hostile inputs tried, by kind: printed for the README's figures


def tried(kind: str, n: int = 1) -> None:
    COUNTED[kind] = COUNTED.get(kind, 0) + n


@pytest.fixture(scope='session', autouse=True)
def _report_counts():
    yield
    if COUNTED: print('\nhostile inputs tried:', COUNTED, 'total', sum(COUNTED.values()))


def one_line(text: str, folder: Path | None = None) -> bool:
    return text.count('\n') == 0 and 'Traceback' not in text and (folder is None or str(folder) not in text)


# Remote stores ------------------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def certificate(tmp_path_factory):
    return self_signed_certificate(tmp_path_factory.mktemp('tls'))


def _drip(handler) -> None:
    handler.send_response(200)
    handler.end_headers()
    for _ in range(600):  # a byte every 0.1 s for a minute
        handler.wfile.write(b'S')
        handler.wfile.flush()
        time.sleep(0.1)


def _drip_headers(handler) -> None:
    handler.wfile.write(b'HTTP/1.1 200 OK\r\n')
    for i in range(600):
        handler.wfile.write(f'X-{i}: 1\r\n'.encode())
        handler.wfile.flush()
        time.sleep(0.1)


def _stream(handler, megabytes: int) -> None:
    handler.send_response(200)
    handler.end_headers()
    chunk = b'SQLite format 3\x00' + bytes(2**20 - 16)
    for _ in range(megabytes): handler.wfile.write(chunk)


def _conditional(handler) -> None:
    if handler.headers.get('If-None-Match') == '"v1"': send(handler, b'', 304, ETag='"v1"')
    else: send(handler, b'index v1', ETag='"v1"', **{'Last-Modified': 'Tue, 01 Dec 2026 10:00:00 GMT'})


@pytest.fixture(scope='module')
def remote(certificate, tmp_path_factory):
    "An HTTPS server on loopback with a good store, other files, redirects of each kind and misbehaving answers."
    folder = tmp_path_factory.mktemp('remote')
    add_empty_run(folder / 'a.db', 'remote-run')
    with sqlite3.connect(folder / 'other.db') as db: db.execute('create table users (name, password)')
    store, other = (folder / 'a.db').read_bytes(), (folder / 'other.db').read_bytes()
    base = {}
    routes = {
        '/a.db': lambda h: send(h, store), '/other.db': lambda h: send(h, other),
        '/page.html': lambda h: send(h, f'<html>{SECRET}</html>'.encode()),
        '/error': lambda h: send(h, SECRET.encode(), 500),
        '/to-http': lambda h: send(h, b'', 302, Location=base['url'].replace('https:', 'http:') + '/a.db'),
        '/to-file': lambda h: send(h, b'', 302, Location='file:///etc/passwd'),
        '/to-ftp': lambda h: send(h, b'', 301, Location='ftp://127.0.0.1/a.db'),
        '/to-store': lambda h: send(h, b'', 307, Location='/a.db'),
        '/loop': lambda h: send(h, b'', 302, Location='/loop'),
        '/drip': _drip, '/drip-headers': _drip_headers, '/huge': lambda h: _stream(h, 64),
        '/huge-declared': lambda h: send(h, b'', **{'Content-Length': str(10**12)}),
        '/conditional': _conditional,
    }
    with https_server(*certificate, routes) as url:
        base['url'] = url
        yield url


@pytest.fixture
def trusting(certificate, monkeypatch):
    "This process trusts the test server's certificate, and may fetch from loopback."
    monkeypatch.setenv('SSL_CERT_FILE', str(certificate[0]))
    monkeypatch.setenv('FASTWATCH_ALLOW_PRIVATE_URLS', '1')


def test_fetch_downloads_into_a_new_private_file(remote, trusting, tmp_path):
    first = fetch(f'{remote}/a.db', tmp_path, max_bytes=2**20, timeout=10)
    second = fetch(f'{remote.upper()[:5]}{remote[5:]}/a.db', tmp_path, max_bytes=2**20, timeout=10)
    assert first.path != second.path and first.path.parent == second.path.parent == tmp_path
    assert stat.S_IMODE(first.path.stat().st_mode) == 0o600 and not first.path.is_symlink()
    assert open_store(first.path, readonly=True).runs()[0].id == 'remote-run'
    redirected = fetch(f'{remote}/to-store', tmp_path, max_bytes=2**20, timeout=10)
    assert redirected.path.read_bytes() == first.path.read_bytes()


def test_fetch_is_conditional(remote, trusting, tmp_path):
    fresh = fetch(f'{remote}/conditional', tmp_path, max_bytes=1000, timeout=10)
    assert fresh.path.read_bytes() == b'index v1' and fresh.etag == '"v1"' and fresh.last_modified.endswith('GMT')
    again = fetch(f'{remote}/conditional', tmp_path, max_bytes=1000, timeout=10, etag=fresh.etag)
    assert again.path is None and again.etag == '"v1"'
    assert len(list(tmp_path.iterdir())) == 1


REFUSED = [  # (path or URL, what the message says)
    ('file:///etc/passwd', 'only https'), ('ftp://127.0.0.1/a.db', 'only https'),
    ('http://127.0.0.1/a.db', 'only https'), ('gopher://127.0.0.1/', 'only https'), ('data:text/plain,x', 'only https'),
    ('javascript:alert(1)', 'only https'),
    ('https:///a.db', 'no host'), ('https://[::1/', 'not a valid URL'), ('https://host.invalid/a.db', 'not found'),
    ('/to-http', 'redirects to a URL that is refused: only https'), ('/to-file', 'redirects'), ('/to-ftp', 'redirects'),
    ('/loop', 'more than 5'), ('/error', 'answered 500'), ('/missing', 'answered 404'),
    ('/huge-declared', 'larger than'), ('/huge', 'larger than'),
]


@pytest.mark.parametrize('target,expected', REFUSED)
def test_fetch_refuses_with_one_line(remote, trusting, tmp_path, target, expected):
    url = remote + target if target.startswith('/') else target
    tracemalloc.start()
    with pytest.raises(FetchError) as e: fetch(url, tmp_path, max_bytes=32 * 2**20, timeout=20)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    tried('remote URLs')
    message = str(e.value)
    assert expected in message and one_line(message, tmp_path) and SECRET not in message, message
    assert isinstance(e.value, FastwatchError)  # and not cut off at the deadline: the message says why instead
    assert peak < 4 * 2**20  # the 64 MB body streams through: at most a few chunks in memory at once
    assert list(tmp_path.iterdir()) == []  # a failed download leaves nothing


@pytest.mark.parametrize('path', ['/drip', '/drip-headers'])
def test_a_slow_drip_is_cut_off_at_the_deadline(remote, trusting, tmp_path, path):
    started = time.monotonic()
    with pytest.raises(FetchError, match='took more than 2 s'):
        fetch(remote + path, tmp_path, max_bytes=2**20, timeout=2)
    assert time.monotonic() - started < 30 and list(tmp_path.iterdir()) == []  # cut off long before the minute
    tried('remote URLs')


@pytest.mark.parametrize('host', ['127.0.0.1', 'localhost', '[::1]', '10.0.0.1', '172.16.5.4', '192.168.1.1',
                                  '169.254.169.254', '100.64.0.1', '0.0.0.0', '224.0.0.1', '240.0.0.1',
                                  '[::ffff:127.0.0.1]', '[fe80::1]', '[fc00::1]', '2130706433'])
def test_private_addresses_are_refused_unless_allowed(remote, certificate, monkeypatch, tmp_path, host):
    monkeypatch.setenv('SSL_CERT_FILE', str(certificate[0]))
    monkeypatch.delenv('FASTWATCH_ALLOW_PRIVATE_URLS', raising=False)
    # The address is checked before any connection is made: a connection that failed would say so instead.
    with pytest.raises(FetchError, match='loopback, private or reserved') as e:
        fetch(f'https://{host}:{remote.rsplit(":", 1)[1]}/a.db', tmp_path, max_bytes=2**20, timeout=5)
    assert one_line(str(e.value))
    tried('remote URLs')
    if host == '127.0.0.1':  # the same URL, allowed
        assert fetch(f'{remote}/a.db', tmp_path, max_bytes=2**20, timeout=5, private=True).path.is_file()


def test_an_untrusted_certificate_is_refused(remote, monkeypatch, tmp_path):
    monkeypatch.setenv('SSL_CERT_FILE', '/nonexistent-bundle.pem')
    with pytest.raises(FetchError, match='certificate cannot be verified'):
        fetch(f'{remote}/a.db', tmp_path, max_bytes=2**20, timeout=5, private=True)
    tried('remote URLs')


def test_the_dashboard_opens_remote_stores_and_refuses_what_is_not_one(remote, trusting, monkeypatch, tmp_path):
    downloads = tmp_path / 'downloads'
    downloads.mkdir(mode=0o700)
    monkeypatch.setenv('FASTWATCH_DOWNLOADS', str(downloads))
    monkeypatch.setenv('FASTWATCH_ROOT', '')
    monkeypatch.setattr('fastwatch.view.page.REMOTE_TIMEOUT', 2)  # the slow drip below is cut off in 2 s, not 30
    assert 'remote-run' in dashboard(f'store={remote}/a.db').children[1].value
    def downloaded(): return [p for p in downloads.iterdir() if not p.name.endswith(('-wal', '-shm'))]
    assert len(downloaded()) == 1
    for target, expected in [('/page.html', 'not a fastwatch store (not SQLite)'),
                             ('/other.db', "another program's database"), ('/to-http', 'refused'),
                             ('/drip', 'took more than')] + [
            (t, 'an https URL' if e == 'only https' else e) for t, e in REFUSED if not t.startswith('/h')]:
        url = remote + target if target.startswith('/') else target
        page = dashboard(f'store={url}').value
        text = html.unescape(page.split("class='fw-error'>", 1)[1].split('</p>', 1)[0])
        assert expected in text and one_line(text, tmp_path) and SECRET not in page and 'users' not in text, target
        tried('query strings')
    assert len(downloaded()) == 1 and len(list(downloads.iterdir())) <= 3  # refused downloads are deleted at once


def test_a_downloads_folder_others_can_enter_is_not_used(monkeypatch, tmp_path):
    from fastwatch.view.page import downloads_dir
    shared = tmp_path / 'shared'
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    (tmp_path / 'link').symlink_to(shared)
    for folder in (shared, tmp_path / 'link', tmp_path / 'missing'):
        monkeypatch.setenv('FASTWATCH_DOWNLOADS', str(folder))
        own = downloads_dir()
        assert own not in (shared, tmp_path / 'link') and stat.S_IMODE(own.stat().st_mode) == 0o700


# Store files that are not stores ------------------------------------------------------------------------------------

def broken_stores(folder: Path) -> dict[str, str]:
    """Files that are not readable fastwatch stores, in `folder`: {name: what the message says}."""
    add_empty_run(folder / 'good.db', 'good-run')
    good = (folder / 'good.db').read_bytes()
    rng = random.Random(11)
    (folder / 'truncated.db').write_bytes(good[:len(good) // 3])
    (folder / 'header-only.db').write_bytes(good[:100])
    (folder / 'random.db').write_bytes(rng.randbytes(8192))
    (folder / 'magic-then-random.db').write_bytes(good[:16] + rng.randbytes(8192))
    (folder / 'empty.db').write_bytes(b'')
    (folder / 'text.fastwatch').write_text('not a store\n' * 50)
    with sqlite3.connect(folder / 'other.db') as db: db.execute('create table users (name, password)')
    with sqlite3.connect(folder / 'sqlite-empty.db') as db: db.execute('pragma user_version=1')
    add_empty_run(folder / 'newer.db', 'newer-run')
    with sqlite3.connect(folder / 'newer.db') as db:
        db.execute("update fastwatch_meta set value=? where key='schema_version'", (str(SCHEMA_VERSION + 1),))
    with sqlite3.connect(folder / 'newer.db') as db: db.execute('pragma wal_checkpoint(truncate)')
    (folder / 'orphan.db-wal').write_bytes(rng.randbytes(4096))  # a write-ahead log whose database is gone
    add_empty_run(folder / 'good-wal.db', 'x')
    (folder / 'foreign.db').write_bytes(good)
    (folder / 'foreign.db-wal').write_bytes(rng.randbytes(4096))  # a WAL that is not this database's: ignored
    (folder / 'good.db').unlink()
    (folder / 'good-wal.db').unlink()
    return {'truncated.db': 'malformed', 'header-only.db': 'malformed', 'random.db': 'not SQLite',
            'magic-then-random.db': 'not a database', 'empty.db': 'not SQLite', 'text.fastwatch': 'not SQLite',
            'other.db': 'not a fastwatch store', 'sqlite-empty.db': 'is empty', 'newer.db': 'newer than',
            'orphan.db': 'no '}


@pytest.fixture
def broken(tmp_path):
    folder = tmp_path / 'stores'
    folder.mkdir()
    return folder, broken_stores(folder)


def test_the_cli_says_what_a_broken_store_is_in_one_line(broken, capsys):
    folder, expected = broken
    before = hashes(folder)
    for name, says in expected.items():
        for argv in (('ls', '--store', str(folder / name)), ('show', 'good-run', '--store', str(folder / name)),
                     ('ls', '--json', '--store', str(folder / name))):
            status, out, err = cli(capsys, *argv)
            tried('store files')
            assert status == 1 and out == '' and err.startswith(f'fastwatch {argv[0]}: ') and one_line(err.strip())
            if not (says == 'not SQLite' or says == 'not a database'):
                assert says in err, (name, err)
    status, out, _ = cli(capsys, 'ls', '--store', str(folder / 'foreign.db'))
    assert status == 0 and 'good-run' in out  # SQLite ignores a log whose header is not its database's
    assert not changes(before, hashes(folder)) and not (folder / 'orphan.db').exists()


def test_the_dashboard_says_what_a_broken_store_is_in_one_line(broken, monkeypatch):
    folder, expected = broken
    monkeypatch.setenv('FASTWATCH_ROOT', str(folder))
    before = hashes(folder)
    for name, says in expected.items():
        page = dashboard(f'store={name}').value
        tried('store files')
        text = html.unescape(page.split("class='fw-error'>", 1)[1].split('</p>', 1)[0])
        assert one_line(text, folder) and 'users' not in text and name in text, (name, text)
        if says != 'not a database': assert says in text or (says == 'no ' and 'no store file' in text), (name, text)
    monkeypatch.setenv('FASTWATCH_STORE', str(folder / 'random.db'))
    page = dashboard('').value
    assert 'the served store' in page and str(folder) not in page
    assert not changes(before, hashes(folder))


# Query strings ------------------------------------------------------------------------------------------------------

def test_query_strings_that_reach_out_of_the_served_folder(tmp_path, monkeypatch):
    root, outside = tmp_path / 'root', tmp_path / 'outside'
    root.mkdir(), outside.mkdir()
    add_empty_run(root / 'in.db', 'inside-run')
    add_empty_run(outside / 'out.db', 'outside-run')
    (root / 'link.db').symlink_to(outside / 'out.db')
    (root / 'linked').symlink_to(outside)
    monkeypatch.setenv('FASTWATCH_ROOT', str(root))
    monkeypatch.setenv('FASTWATCH_STORE', str(root / 'in.db'))
    cases = {'store=../outside/out.db': 'inside the served folder', f'store={outside}/out.db': 'inside the served',
             'store=link.db': 'inside the served folder', 'store=linked/out.db': 'inside the served folder',
             'store=%2e%2e%2foutside%2fout.db': 'inside the served', 'store=....//outside/out.db': 'no store file',
             'store=file:///etc/passwd': 'https URL', 'store=FILE:/etc/passwd': 'https URL',
             'store=sqlite:////etc/x.db': 'https URL', 'store=postgresql://u:p@127.0.0.1/db': 'https URL',
             'store=http://127.0.0.1/a.db': 'https URL', 'store=%00': 'control character',
             'store=in.db%00x': 'control character', 'run=../../x': 'run id', 'run=' + 'a' * 65: 'run id',
             'run=nope': 'inside-run', 'run=%3Cscript%3E': 'run id', 'run=%E2%80%AEabc': 'run id',
             'store=' + 'x' * 5000: 'longer than', 'run=a&run=b': 'once', 'store=': 'empty', 'x=1': 'unknown',
             '%ff%fe=1': 'unknown', 'store=/': 'inside the served', 'store=.': 'no store file',
             'store=runs': 'no store file'}
    for query, says in cases.items():
        page = dashboard(query).value
        text = html.unescape(page.split("class='fw-error'>", 1)[1].split('</p>', 1)[0])
        tried('query strings')
        assert says in text and one_line(text, None if str(tmp_path) in query else tmp_path), (query, text)
        assert 'outside-run' not in page  # a message repeats what the viewer typed, and nothing of the server's
    assert 'inside-run' in dashboard('store=in.db').children[1].value
    monkeypatch.setenv('FASTWATCH_ROOT', '')  # fastwatch serve without --root: only the served store
    assert 'needs fastwatch serve --root' in dashboard('store=in.db').value
    assert 'inside-run' in dashboard('run=inside-run').children[1].value


# Fuzzing ------------------------------------------------------------------------------------------------------------

QUERY_TEXT = st.text(alphabet=st.characters(codec='utf-8') | st.sampled_from('=&%?#/.;+'), max_size=300)
QUERY_PARTS = st.lists(st.tuples(st.sampled_from(['run', 'store', 'token', 'template', 'x', '']), QUERY_TEXT),
                       max_size=4).map(lambda parts: '&'.join(f'{k}={v}' for k, v in parts))


@settings(max_examples=600, deadline=None)
@given(st.one_of(QUERY_TEXT, QUERY_PARTS))
def test_fuzz_the_query_parser(query):
    tried('hypothesis: query strings')
    try: found = parse_query(query)
    except QueryError as e: assert one_line(str(e)) and len(str(e)) < 400
    else: assert set(found) <= {'run', 'store'} and all(v and v == v.strip() for v in found.values())


@functools.cache
def snapshot() -> bytes:
    """A real snapshot file's bytes: a store with a finished run and rows of each kind (not a fixture: hypothesis
    would print its 170 kB with each failing example)."""
    folder = Path(tempfile.mkdtemp())
    add_empty_run(folder / 'store.db', 'fuzzed-run')
    store = open_store(folder / 'store.db')
    store.write({'batches': [BatchRow('fuzzed-run', i, 0, 0, False, 1.0, 1.0, 1e-3, 0.9, 2.0, None)
                             for i in range(50)]})
    store.close()
    with sqlite3.connect(folder / 'store.db') as db: db.execute('pragma wal_checkpoint(truncate)')
    data = (folder / 'store.db').read_bytes()
    shutil.rmtree(folder)
    return data


def rows(path: Path) -> dict[str, list]:
    "Every row of every table of a SQLite store, sorted."
    with sqlite3.connect(f'file:{path}?mode=ro', uri=True) as db:
        tables = [name for (name,) in db.execute("select name from sqlite_master where type='table'")]
        return {table: sorted(map(repr, db.execute(f'select * from "{table}"'))) for table in tables}


def mutated(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    out = bytearray(data)
    for position, value in edits: out[position % len(out)] = value
    return bytes(out[:cut] if cut is not None else out)


EDITS = st.lists(st.tuples(st.integers(0, 2**20), st.integers(0, 255)), min_size=1, max_size=12)
CUTS = st.one_of(st.none(), st.integers(0, 2**16))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=EDITS, cut=CUTS)
def test_fuzz_the_store_reader_on_mutated_snapshots(tmp_path, edits, cut):
    tried('hypothesis: mutated snapshots read')
    path = tmp_path / f'mutated-{os.getpid()}-{threading.get_ident()}-{time.monotonic_ns()}.db'
    path.write_bytes(mutated(snapshot(), edits, cut))
    before = path.read_bytes()
    try:
        store = open_store(path, readonly=True)
        for run in store.runs():
            store.run(run.id)
            store.batches(run.id)
            store.epochs(run.id)
        for summary in run_summaries(store): summary.columns()  # the runs table
        store.close()
    except StoreError as e: assert one_line(str(e)), str(e)
    assert path.read_bytes() == before
    path.unlink()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=EDITS, cut=CUTS)
def test_fuzz_import_of_mutated_snapshots(tmp_path, capsys, edits, cut):
    tried('hypothesis: mutated snapshots imported')
    dest = tmp_path / f'dest-{time.monotonic_ns()}.db'
    add_empty_run(dest, 'already-there')
    with sqlite3.connect(dest) as db: db.execute('pragma wal_checkpoint(truncate)')
    source = tmp_path / f'source-{time.monotonic_ns()}.fastwatch'
    source.write_bytes(mutated(snapshot(), edits, cut))
    rows_before = rows(dest)
    try: status, out, err = cli(capsys, 'import', str(source), '--store', str(dest))
    except Exception as e: pytest.fail(f'import raised {type(e).__name__}: {e}')
    if status:
        assert one_line(err.strip()) and err.startswith('fastwatch import: ') and out == ''
        assert rows(dest) == rows_before  # a failed import changes nothing
    else:
        assert out.startswith('imported') and err == ''
