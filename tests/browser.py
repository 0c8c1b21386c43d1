"""Helpers for the end-to-end tests and benchmarks: a real `fastwatch serve`, Debian's chromium driven by playwright,
a local HTTPS server with a certificate of its own."""
from __future__ import annotations

import http.server
import json
import math
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlencode

from helpers import wait_for

CHROMIUM = '/usr/bin/chromium'
CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                 '--disable-background-networking', '--disable-component-update', '--disable-sync']
# Reads a number from the page's bokeh documents, where each chart's sources are named `<series>:<run id>`.
POINTS_JS = """name => { for (const doc of (window.Bokeh ? Bokeh.documents : []))
  for (const model of doc._all_models.values()) if (model.name && model.name.startsWith(name + ':'))
    return model.data.x.length;
  return -1; }"""
TRAIN = """import sys
from fastwatch import WatchCallback
from fastwatch.demo.digits import digits_dls, digits_learner
learn = digits_learner(digits_dls(sys.argv[1]), cbs=WatchCallback(store=sys.argv[2], name=sys.argv[4]))
with learn.no_bar(), learn.no_logging(): learn.fine_tune(int(sys.argv[3]), base_lr=1e-2)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


@contextmanager
def served(store: Path, cwd: Path, timeout: float = 60, config: dict | None = None, host: str = '127.0.0.1',
           args: tuple[str, ...] = (), env: dict | None = None):
    """`fastwatch serve` on a free port of `host` for the duration, with more command-line `args` (`--root DIR`),
    environment variables `env` and Voila `config` (`{class: {trait: value}}`): the URL it prints, with its token
    (`with_query` adds to it)."""
    port = free_port()
    env = {**os.environ, **(env or {})}
    if config:  # read by the server from its voila.json
        (cwd / 'jupyter-config').mkdir(exist_ok=True)
        (cwd / 'jupyter-config' / 'voila.json').write_text(json.dumps(config))
        env['JUPYTER_CONFIG_DIR'] = str(cwd / 'jupyter-config')
    command = ['serve', '--store', str(store), '--port', str(port), '--host', host, *args]
    # A file beside `cwd`, not a pipe: a pipe nobody drains would fill and block the server and its kernels.
    log = cwd.parent / f'serve-{port}.log'
    with log.open('w') as out:
        server = subprocess.Popen([sys.executable, '-c', 'from fastwatch.cli import main; main()', *command], cwd=cwd,
                                  env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while not (opened := re.search(r'open (\S+)', log.read_text())):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f'fastwatch serve did not start: {log.read_text()[-2000:]}')
            time.sleep(0.2)
        wait_for(lambda: _accepts(host, port), timeout)
        yield opened[1]
    finally:
        server.terminate()
        server.wait(20)


def _accepts(host: str, port: int) -> bool:
    try: socket.create_connection(('127.0.0.1' if host == '0.0.0.0' else host, port), timeout=1).close()
    except OSError: return False
    return True


def with_query(url: str, **params: str) -> str:
    "A served URL (`http://host:port/?token=T`) with more query parameters: `with_query(url, run=run_id)`."
    return f'{url}&{urlencode(params)}' if '?' in url else f'{url}?{urlencode(params)}'


def self_signed_certificate(folder: Path, host: str = '127.0.0.1') -> tuple[Path, Path]:
    "A certificate for `host` and its key, made with openssl; trusted by a process through SSL_CERT_FILE."
    cert, key = folder / 'cert.pem', folder / 'key.pem'
    subprocess.run(['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', f'/CN={host}',
                    '-addext', f'subjectAltName=IP:{host},DNS:localhost', '-keyout', str(key), '-out', str(cert)],
                   check=True, capture_output=True)
    return cert, key


@contextmanager
def https_server(cert: Path, key: Path, routes: dict):
    """A local HTTPS server in a thread, answering each path with `routes[path](handler)` (a
    `BaseHTTPRequestHandler`), 404 otherwise: its base URL, `https://127.0.0.1:PORT`."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            route = routes.get(self.path.split('?', 1)[0])
            if route is None: self.send_error(404)
            else:
                try: route(self)
                except (BrokenPipeError, ConnectionResetError, ssl.SSLError): pass  # the client hung up

        def log_message(self, *args): pass

    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    server.daemon_threads = True
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try: yield f'https://127.0.0.1:{server.server_address[1]}'
    finally:
        server.shutdown()
        server.server_close()


def kernel_processes(url: str) -> dict[str, int]:
    """The kernels of the `fastwatch serve` at `url` (ipykernel processes whose parent's command line names its
    port), viewers' and preheated ones: {kernel id: process id}."""
    port = f"--port\0{url.rsplit(':', 1)[1].split('/')[0]}\0".encode()
    found = {}
    for proc in Path('/proc').iterdir():
        try:
            if not proc.name.isdigit() or b'ipykernel' not in (command := (proc / 'cmdline').read_bytes()): continue
            parent = re.search(r'PPid:\s+(\d+)', (proc / 'status').read_text())[1]
            if port in (Path('/proc') / parent / 'cmdline').read_bytes():
                found[re.search(rb'kernel-([0-9a-f-]+)\.json', command)[1].decode()] = int(proc.name)
        except (OSError, TypeError): continue  # a process that ended meanwhile
    return found


def peak_mb(pid: int) -> float:
    "A process's peak resident memory in MB (VmHWM); NaN for one that ended (a zombie has no VmHWM)."
    try: return int(re.search(r'VmHWM:\s+(\d+)', Path(f'/proc/{pid}/status').read_text())[1]) / 1024
    except (OSError, TypeError): return float('nan')


def kernels(url: str) -> dict[str, float]:
    "The kernels of the `fastwatch serve` at `url`: {kernel id: peak resident memory in MB (VmHWM)}."
    peaks = {kernel_id: peak_mb(pid) for kernel_id, pid in kernel_processes(url).items()}
    return {kernel_id: peak for kernel_id, peak in peaks.items() if not math.isnan(peak)}  # ended ones left out


def page_kernel(page) -> str:
    "The id of the kernel a dashboard page runs on."
    return page.evaluate("JSON.parse(document.getElementById('jupyter-config-data').textContent).kernelId")


def train_in_background(digits: Path, store: Path, epochs: int, name: str = 'live') -> subprocess.Popen:
    "Another process that fine_tunes the small CNN on the digits into `store`."
    return subprocess.Popen([sys.executable, '-c', TRAIN, str(digits), str(store), str(epochs), name])


def launch(playwright):
    "Debian's chromium, headless."
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def points(page, series: str = 'loss') -> int:
    "How many points the page's bokeh document holds for a series of the shown run (-1: no such chart yet)."
    return page.evaluate(POINTS_JS, series)


def open_dashboard(page, url: str, timeout: float = 30) -> float:
    "Open the dashboard and wait for a chart's canvas and its data: seconds it took."
    started = time.perf_counter()
    page.goto(url)
    wait_for_charts(page, timeout)
    return time.perf_counter() - started


def wait_for_charts(page, timeout: float = 30) -> None:
    "Wait until the page's charts are drawn with their data."
    page.wait_for_selector('canvas', timeout=timeout * 1000)
    page.wait_for_function(f'({POINTS_JS})("loss") > 0', timeout=timeout * 1000)


def wait_for_points(page, count: int, series: str = 'loss', timeout: float = 10) -> None:
    "Wait until the page's bokeh document holds `count` points of a series."
    page.wait_for_function(f'({POINTS_JS})({series!r}) == {count}', timeout=timeout * 1000)


@contextmanager
def jupyter(folder: Path, app: str = 'lab', timeout: float = 120):
    """`jupyter lab` (or `jupyter notebook`, Notebook 7) serving `folder` on a free port, with a token, for the
    duration: its base URL and the token, `(http://127.0.0.1:PORT/, TOKEN)`."""
    port, token = free_port(), 'fastwatch-test'
    log, own = folder.parent / f'jupyter-{port}.log', folder.parent / f'jupyter-{port}-settings'
    own.mkdir()  # workspaces and settings of this server alone: nothing of another test's session is restored
    with log.open('w') as out:
        server = subprocess.Popen([str(Path(sys.executable).parent / 'jupyter'), app, '--no-browser', f'--port={port}',
                                   f'--IdentityProvider.token={token}', f'--ServerApp.root_dir={folder}',
                                   '--allow-root', '--LabApp.news_url=None', f'--LabApp.workspaces_dir={own}',
                                   f'--LabApp.user_settings_dir={own}'], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(('127.0.0.1', port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f'jupyter {app} did not start: {log.read_text()[-2000:]}') from None
                time.sleep(0.2)
        yield f'http://127.0.0.1:{port}/', token
    finally:
        server.terminate()
        server.wait(30)


def run_all_cells(page) -> None:
    "Run every cell of the notebook open in JupyterLab or Notebook 7, from its Run menu."
    page.click('.lm-MenuBar-itemLabel:text-is("Run")')
    page.click('.lm-Menu-itemLabel:text-is("Run All Cells")')
