"""The way from the compact view under a notebook cell to the full dashboard: a button that starts `fastwatch serve`
of the store on this machine (once per store and kernel, when first asked: nothing runs for it before), then a
link that opens the shown run there; in Colab, through Colab's proxy of its machine's ports."""
from __future__ import annotations

import atexit
import socket
import subprocess
import sys
import threading
from urllib.parse import parse_qsl, urlencode, urlsplit

import ipywidgets as widgets

from ...errors import FastwatchError
from ...store import Store
from ..html import escape
from ..notebooks import notebook_host

START_TIMEOUT = 60.0  # seconds `fastwatch serve` may take to print its URL


class LocalServer:
    "A `fastwatch serve` of one store, started by this kernel and stopped with it."
    _started: dict[str, LocalServer] = {}
    _lock = threading.Lock()

    @classmethod
    def for_store(cls, url: str) -> LocalServer:
        "The server of the store at `url`, started on the first call."
        with cls._lock:
            server = cls._started.get(url)
            if server is None or server.process.poll() is not None: server = cls._started[url] = cls(url)
        return server

    def __init__(self, url: str):
        with socket.socket() as sock:
            sock.bind(('127.0.0.1', 0))
            self.port = sock.getsockname()[1]
        command = [sys.executable, '-c', 'from fastwatch.cli import main; main()', 'serve', '--store', url,
                   '--port', str(self.port)]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                        start_new_session=True)
        atexit.register(self.process.terminate)
        self.url = self._printed_url()

    def _printed_url(self) -> str:
        "The URL, with its token, that the server prints once it listens."
        found: list[str] = []

        def read() -> None:
            for line in self.process.stdout:
                if line.strip().startswith('open '):
                    found.append(line.split('open ', 1)[1].strip())
                    return
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(START_TIMEOUT)
        if not found:
            self.process.terminate()
            raise FastwatchError(f'fastwatch serve did not start within {START_TIMEOUT:g} s')
        return found[0]

    def link(self, run_id: str, colab: bool = False) -> str:
        "The URL that opens run `run_id`; in Colab, through Colab's proxy of this port."
        parts = urlsplit(self.url)
        query = urlencode([('run', run_id), *parse_qsl(parts.query)])
        if not colab: return f'{parts.scheme}://{parts.netloc}{parts.path}?{query}'
        from google.colab.output import eval_js  # Colab's documented way to a port of its kernel's machine
        return eval_js(f'google.colab.kernel.proxyPort({self.port})').rstrip('/') + f'/?{query}'


class FullPage:
    "A button that opens the shown run on a full dashboard served from this machine."
    css = """
.fw-full-page { display: flex; flex-wrap: wrap; gap: 8px; align-items: center; }
"""

    def __init__(self, store: Store):
        self.store_url = store.engine.url.render_as_string(hide_password=False)
        self.run_id: str | None = None
        self.button = widgets.Button(description='Open the full dashboard', layout=widgets.Layout(width='auto'))
        self.link = widgets.HTML()
        self.widget = widgets.HBox([self.button, self.link])
        self.widget.add_class('fw-full-page')
        self.button.on_click(lambda _: threading.Thread(target=self._open, daemon=True).start())

    def render(self, run_id: str) -> None:
        self.run_id = run_id

    def _open(self) -> None:
        "Start the server (on a thread of its own: it takes seconds), then show the link."
        self.button.disabled, self.link.value = True, "<span class='fw-muted'>starting fastwatch serve…</span>"
        try:
            url = LocalServer.for_store(self.store_url).link(self.run_id, colab=notebook_host() == 'colab')
            self.link.value = (f"<a class='fw-full-link' href='{escape(url)}' target='_blank' rel='noopener'>"
                               f'open run {escape(self.run_id)}</a>')
        except Exception as e:
            self.link.value = f"<span class='fw-error'>{escape(str(e))}</span>"
        finally:
            self.button.disabled = False
