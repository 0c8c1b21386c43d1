"""Who may do what on a real `fastwatch serve`, in Debian's chromium: XSRF kept (but for Voila's tab-close shutdown),
kernels that run only widget messages, `?store=` within `--root` and https stores fetched into a private folder,
hostile names shown as text, and a store no viewer changes."""
from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import stat
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from browser import (
    CHROMIUM,
    https_server,
    kernels,
    open_dashboard,
    page_kernel,
    self_signed_certificate,
    served,
    with_query,
)
from helpers import changes, hashes, send, train, wait_for

from fastwatch import open_store
from fastwatch.demo.digits import digits_dls, digits_folder

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f'no chromium at {CHROMIUM} (.ci/run installs it)')
CLASSES = ['<img src=x onerror=window.__pwned=1>', '<svg onload=window.__pwned=2>', '<script>window.__pwned=3',
           '"><b onmouseover=window.__pwned=4>x', "'><iframe src=javascript:parent.__pwned=5>",
           '\u202eevil\u202c right-to-left', 'e\u0301\u0302\u0303' * 30, '🔥💥🧨 emoji', 'W' * 200, '{{7*7}} ${7*7} %s']
RUN_NAME = '<script>window.__pwned=6</script>' + 'N' * 300
CONFIG = {'html': '<img src=x onerror=window.__pwned=7>', 'long': 'L' * 5000, 'rtl': '\u202e', '<b>key</b>': 1}
INJECTED = "document.querySelectorAll('[onerror],[onload],[onmouseover],iframe,svg[onload],b[onmouseover]').length"


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    """A run with hostile class, run and config names, recorded by a real training; served with `--root` (holding a
    copy of the store) and `--allow-private-urls`, beside an HTTPS server with another copy."""
    folder = tmp_path_factory.mktemp('access')
    train(digits_dls(digits_folder(folder / 'digits', per_class=20, class_names=CLASSES)), folder / 'store.db',
          epochs=1, name=RUN_NAME, config=CONFIG)
    (folder / 'root').mkdir()
    with sqlite3.connect(folder / 'store.db') as src, sqlite3.connect(folder / 'root' / 'copy.db') as dst:
        src.backup(dst)
    with sqlite3.connect(folder / 'root' / 'copy.db') as db: db.execute('pragma journal_mode=delete')
    cert, key = self_signed_certificate(folder)
    copy = (folder / 'root' / 'copy.db').read_bytes()
    (folder / 'tmp').mkdir()
    env = {'SSL_CERT_FILE': str(cert), 'TMPDIR': str(folder / 'tmp')}  # TMPDIR: where serve makes its folder
    before = hashes(folder)
    with https_server(cert, key, {'/copy.db': lambda h: send(h, copy)}) as remote, \
            served(folder / 'store.db', folder, args=('--root', str(folder / 'root'), '--allow-private-urls'),
                   env=env) as url:
        yield {'url': url, 'folder': folder, 'remote': remote, 'env': env, 'before': before,
               'run_id': open_store(folder / 'store.db', readonly=True).runs()[0].id}
    assert not list((folder / 'tmp').glob('fastwatch-serve-*'))  # the server deletes its downloads as it exits


def error_text(page) -> str:
    page.wait_for_selector('.fw-error', timeout=30_000)
    return page.inner_text('.fw-error')


@pytest.mark.parametrize('width', [1280, 390])
def test_hostile_names_are_shown_as_text(site, page, width):
    page.set_viewport_size({'width': width, 'height': 900})
    open_dashboard(page, with_query(site['url'], run=site['run_id']))
    page.wait_for_selector('.fw-gallery img', timeout=30_000)
    page.hover('.fw-gallery img')
    time.sleep(1)
    assert page.evaluate('window.__pwned') is None and page.dialogs == [] and page.evaluate(INJECTED) == 0
    text = page.inner_text('body')
    assert RUN_NAME[:40] in text  # shown, as text
    assert any(name[:30] in text for name in CLASSES)  # class names in the gallery's captions and the pairs
    assert page.evaluate('document.documentElement.scrollWidth') <= width  # no horizontal overflow


def test_viewers_change_no_file(site, page):
    open_dashboard(page, with_query(site['url'], run=site['run_id'], store='copy.db'))
    for control in page.query_selector_all('select, input[type=checkbox]')[:4]:
        try: control.click(timeout=2000)
        except Exception: pass  # a control hidden on this layout
    time.sleep(2)
    assert not [name for name in changes(site['before'], hashes(site['folder']))
                if not name.startswith(('tmp/', 'jupyter-config'))]


def test_store_paths_stay_inside_root_and_remote_stores_are_private_downloads(site, page):
    open_dashboard(page, with_query(site['url'], store='copy.db'))  # in --root
    for store, says in [('../store.db', 'inside the served folder'), (str(site['folder'] / 'store.db'), 'inside'),
                        ('digits', 'no store file'), ('http://127.0.0.1/x.db', 'https URL')]:
        page.goto(with_query(site['url'], store=store))
        text = error_text(page)
        assert says in text and str(site['folder']) not in text.replace(store, ''), text
    downloads = next((site['folder'] / 'tmp').glob('fastwatch-serve-*'))
    assert stat.S_IMODE(downloads.stat().st_mode) == 0o700
    open_dashboard(page, with_query(site['url'], store=f"{site['remote']}/copy.db"))
    assert RUN_NAME[:40] in page.inner_text('body')
    assert len([p for p in downloads.iterdir() if not p.name.endswith(('-wal', '-shm'))]) == 1
    kernel = page_kernel(page)
    page.close(run_before_unload=True)
    # Gone with the page's own shutdown, well before the server's orphan timeout (60 s) could explain it.
    wait_for(lambda: kernel not in kernels(site['url']) and not list(downloads.iterdir()), timeout=45)


def test_serve_without_root_or_allow_opens_only_its_store(site, page, tmp_path):
    shutil.copy(site['folder'] / 'root' / 'copy.db', tmp_path / 'copy.db')
    with served(tmp_path / 'copy.db', tmp_path, env=site['env']) as url:
        page.goto(with_query(url, store='copy.db'))
        assert 'needs fastwatch serve --root' in error_text(page)
        page.goto(with_query(url, store=f"{site['remote']}/copy.db"))
        assert 'loopback, private or reserved' in error_text(page)


def _cookie_header(page) -> str:
    return '; '.join(f"{c['name']}={c['value']}" for c in page.context.cookies())


def post(url: str, **headers: str) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=b'', headers=headers, method='POST'),
                                    timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as e: return e.code


def test_cross_site_posts_are_refused_and_tab_close_still_shuts_the_kernel_down(site, page, browser):
    open_dashboard(page, with_query(site['url'], run=site['run_id']))
    kernel, base = page_kernel(page), site['url'].split('?')[0]
    shutdown, cookie = f'{base}voila/api/shutdown/{kernel}', _cookie_header(page)
    # Another site's page, in the same browser (so with the login cookie), posting as Voila's own page does.
    evil = page.context.new_page()
    evil.route('http://127.0.0.1:1/evil.html', lambda route: route.fulfill(body='<html>evil</html>',
                                                                           content_type='text/html'))
    evil.goto('http://127.0.0.1:1/evil.html')
    evil.evaluate("""url => { const form = new FormData(); form.append('_xsrf', '');
        navigator.sendBeacon(url, form); return fetch(url, {method: 'POST', mode: 'no-cors', credentials: 'include',
        body: form}).catch(() => null); }""", shutdown)
    time.sleep(3)
    assert kernel in kernels(site['url']), "another site's page shut a viewer's kernel down"
    assert post(shutdown, Cookie=cookie, Origin='http://evil.example') == 403
    assert post(shutdown, Cookie=cookie) == 403  # no Origin: not a page of this server's
    assert post(f'{base}api/kernels', Cookie=cookie, Origin=base.rstrip('/')) == 403  # XSRF: no _xsrf field
    assert kernel in kernels(site['url'])
    evil.close()
    page.close(run_before_unload=True)  # Voila's page posts the shutdown itself, without an _xsrf value
    wait_for(lambda: kernel not in kernels(site['url']), timeout=45)  # before the 60 s orphan timeout could explain it


async def _talk(url: str, messages: list[dict], wait: float) -> list[dict]:
    from tornado.websocket import websocket_connect
    connection = await websocket_connect(url)
    for message in messages: await connection.write_message(json.dumps(message))
    replies, deadline = [], time.monotonic() + wait
    while time.monotonic() < deadline:
        try: text = await asyncio.wait_for(connection.read_message(), deadline - time.monotonic())
        except asyncio.TimeoutError: break
        if text is None: break
        replies.append(json.loads(text))
    connection.close()
    return replies


def _message(kind: str, content: dict) -> dict:
    header = {'msg_id': uuid.uuid4().hex, 'session': uuid.uuid4().hex, 'username': 'viewer', 'msg_type': kind,
              'version': '5.3', 'date': '2026-12-01T00:00:00Z'}
    return {'header': header, 'parent_header': {}, 'metadata': {}, 'content': content, 'channel': 'shell'}


def test_a_viewers_kernel_runs_only_widget_messages(site, page, tmp_path):
    open_dashboard(page, with_query(site['url'], run=site['run_id']))
    kernel, (base, token) = page_kernel(page), site['url'].split('?token=')
    marker = tmp_path / 'executed'
    code = f'open({str(marker)!r}, "w").write("pwned")'
    requests = [_message('execute_request', {'code': code, 'silent': False, 'store_history': False,
                                             'user_expressions': {}, 'allow_stdin': False, 'stop_on_error': True}),
                _message('inspect_request', {'code': code, 'cursor_pos': 3, 'detail_level': 0}),
                _message('complete_request', {'code': 'import o', 'cursor_pos': 8}),
                _message('history_request', {'output': False, 'raw': True, 'hist_access_type': 'tail', 'n': 5}),
                _message('kernel_info_request', {})]
    ws = base.replace('http://', 'ws://') + f'api/kernels/{kernel}/channels?token={token}'
    with ThreadPoolExecutor(1) as thread:  # playwright's own event loop runs in this thread
        replies = thread.submit(asyncio.run, _talk(ws, requests, wait=5)).result()
    kinds = {r['header']['msg_type'] for r in replies if r.get('parent_header', {}).get('msg_id') in
             {m['header']['msg_id'] for m in requests}}
    assert 'kernel_info_reply' in kinds  # the channel works ...
    assert not kinds & {'execute_reply', 'execute_input', 'inspect_reply', 'complete_reply', 'history_reply'}
    assert not marker.exists()  # ... and runs nothing but widget messages
    assert kernel in kernels(site['url'])  # and the page's kernel lives on
