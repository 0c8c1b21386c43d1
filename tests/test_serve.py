"""`fastwatch serve` over HTTP, without a browser: compressed static files, and a token on every interface."""
from __future__ import annotations

import gzip
import socket
import urllib.error
import urllib.request

from browser import served
from helpers import add_empty_run

from fastwatch.view.server import BOKEHJS


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args) -> None: return None


def get(url: str, **headers: str) -> tuple[int, dict, bytes]:
    "Status, headers and body, as sent: not decompressed, redirects not followed."
    try:
        with urllib.request.build_opener(NoRedirect).open(urllib.request.Request(url, headers=headers), timeout=30) \
                as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_static_files_are_compressed_once_and_arrive_unchanged(tmp_path):
    add_empty_run(tmp_path / 'store.db', 'a-run')
    bokehjs = BOKEHJS / 'js' / 'bokeh.min.js'  # 1 MB: tornado sends it in pieces
    with served(tmp_path / 'store.db', tmp_path) as url:
        url = url.replace('/?', '/fastwatch/static/js/bokeh.min.js?')
        first, second = (get(url, **{'Accept-Encoding': 'gzip'}) for _ in range(2))
        plain = get(url)
        unchanged = get(url, **{'Accept-Encoding': 'gzip', 'If-None-Match': first[1]['Etag']})
    assert first[0] == second[0] == 200 and first[1]['Content-Encoding'] == second[1]['Content-Encoding'] == 'gzip'
    assert 'Content-Length' not in first[1]  # compressed piece by piece as it was sent ...
    assert int(second[1]['Content-Length']) == len(second[2]) < bokehjs.stat().st_size / 2  # ... then kept whole
    assert gzip.decompress(first[2]) == gzip.decompress(second[2]) == bokehjs.read_bytes() == plain[2]
    assert 'Content-Encoding' not in plain[1] and unchanged[0] == 304


def asks_for_the_token(url: str) -> None:
    "The printed URL opens the page; without its token, or with another, the server asks for it."
    token = url.split('?token=')[1]
    assert len(token) >= 32 and get(url)[0] == 200
    for wrong in (url.split('?')[0], url.replace(token, token[::-1]), url.split('?')[0] + 'voila/api/shutdown/x'):
        status, headers, _ = get(wrong)
        assert status in (302, 403, 405) and (status != 302 or '/login' in headers['Location']), wrong
    assert get(url.split('?')[0] + 'api/kernels')[0] in (302, 403)


def test_another_interface_asks_for_the_printed_token(tmp_path):
    add_empty_run(tmp_path / 'store.db', 'a-run')
    with served(tmp_path / 'store.db', tmp_path, host='0.0.0.0') as url:
        assert url.startswith(f'http://{socket.gethostname()}:')
        asks_for_the_token(url.replace(socket.gethostname(), '127.0.0.1'))


def test_loopback_asks_for_the_printed_token_too(tmp_path):
    add_empty_run(tmp_path / 'store.db', 'a-run')
    with served(tmp_path / 'store.db', tmp_path) as url:
        assert url.startswith('http://127.0.0.1:')
        asks_for_the_token(url)
