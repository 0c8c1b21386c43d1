"""`fastwatch serve` and `fastwatch demo`: the dashboard notebook served by Voila, and a live training to watch on it.

The notebook ships inside the package (`fastwatch/app/dashboard.ipynb`, the same file as the repository's
`apps/dashboard.ipynb`), so `fastwatch serve` works from a wheel.
"""
from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from bokeh.util.paths import bokehjs_path
from fastcore.script import CliError
from jupyter_server.utils import url_path_join
from tornado.ioloop import PeriodicCallback
from tornado.web import StaticFileHandler
from traitlets import Float
from voila.app import Voila

from .compression import CachedGzip
from .schema import StoreError
from .store import open_store, store_url

APP = Path(__file__).parent / 'app' / 'dashboard.ipynb'
BOKEHJS = bokehjs_path()  # BokehJS's own files: js/bokeh.min.js
LOOPBACK = ('127.0.0.1', 'localhost', '::1')
IDLE_KERNEL_SECONDS = 1800  # Voila culls a viewer's kernel idle this long (once its live loop has stopped)
PREHEATED_KERNELS = 2  # kernels that have run the notebook up to the page's query, waiting for the next pages
# A new preheated kernel is started this long after a page takes one, once that page has loaded: starting a kernel
# takes a CPU core for about 1.5 s; on 2 cores, starting it at once made the page's first render 2.9 s, not 2.1 s.
REFILL_DELAY_SECONDS = 3


class DashboardServer(Voila):
    """Voila, compressing what it sends (the page weighs a third; static files are compressed once), shutting the
    kernels of closed and abandoned pages down, and rendering the page with `app/index.html.j2`, whose BokehJS
    comes from `/fastwatch/static/`."""

    orphan_timeout = Float(60, config=True, help='seconds a viewer kernel may stay idle with no page connected')

    def init_settings(self) -> dict:
        settings = super().init_settings()
        # Voila's page asks the server to shut its kernel down when the tab closes, but without an _xsrf field,
        # so it is refused (voila issue 1458) and kernels pile up. Kernel ids are random, so the check adds little.
        settings.update(transforms=[CachedGzip], websocket_compression_options={}, disable_check_xsrf=True)
        return settings

    def setup_template_dirs(self) -> None:
        super().setup_template_dirs()
        self.template_paths.insert(0, str(APP.parent))  # its index.html.j2 extends Voila's lab template

    def init_handlers(self) -> list:
        return [(url_path_join(self.server_url, r'/fastwatch/static/(.*)'), StaticFileHandler,
                 {'path': BOKEHJS}), *super().init_handlers()]

    def listen(self) -> None:
        self._alone_since: dict[str, float] = {}
        PeriodicCallback(self._shut_abandoned_kernels_down, 1000).start()
        super().listen()

    async def _shut_abandoned_kernels_down(self) -> None:
        """Shut down the kernels of pages that went away without closing (a browser that crashed, a phone that lost
        its network): idle, with no page connected, for `orphan_timeout` s. Preheated kernels are busy waiting
        for a page, and a page's kernel is busy until its page is rendered."""
        manager, now = self.kernel_manager, time.monotonic()
        models = [manager.kernel_model(kernel_id) for kernel_id in manager.list_kernel_ids()]
        self._alone_since = {m['id']: self._alone_since.get(m['id'], now) for m in models
                             if not m['connections'] and m['execution_state'] == 'idle'}
        for kernel_id, since in list(self._alone_since.items()):
            if now - since > self.orphan_timeout: await manager.shutdown_kernel(kernel_id)

def voila_argv(port: int, host: str, token: str) -> list[str]:
    "Voila's command line for the dashboard: preheated kernels (the page is ready sooner), idle ones culled."
    return [str(APP), '--no-browser', f'--port={port}', f'--Voila.ip={host}', f'--token={token}',
            '--preheat_kernel=True', f'--pool_size={PREHEATED_KERNELS}',
            f'--VoilaKernelManager.fill_delay={REFILL_DELAY_SECONDS}', '--Voila.log_level=WARN',
            '--VoilaConfiguration.extension_denylist=jupyterlab_pygments',  # code highlighting: no code is shown
            f'--MappingKernelManager.cull_idle_timeout={IDLE_KERNEL_SECONDS}',
            '--MappingKernelManager.cull_interval=60']


def _location(store: str | None) -> str:
    "The store's absolute path (or server URL), checked to be a readable fastwatch store."
    url = store_url(store)
    location = url.removeprefix('sqlite:///')
    try: open_store(location, readonly=True).close()
    except StoreError as e: raise CliError(f'{e} (record a run with WatchCallback first, or try fastwatch demo)')
    return location


def _check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ':' in host else socket.AF_INET) as sock:
        try: sock.bind((host, port))
        except OSError as e: raise CliError(f'cannot listen on {host}:{port} ({e.strerror}): pick another --port')


def dashboard_url(host: str, port: int, token: str = '') -> str:
    "The URL to open for a server listening on `host`."
    name = socket.gethostname() if host in ('0.0.0.0', '::', '') else host
    return f"http://{name}:{port}/" + (f'?token={token}' if token else '')


def serve(store: str = None,  # store path or URL (default: $FASTWATCH_STORE, then ./fastwatch.db)
          port: int = 8866,  # port to listen on
          host: str = '127.0.0.1',  # interface to listen on; any other than localhost requires a token
          token: bool = False,  # require a token (generated, printed in the URL)
          ) -> None:
    "Serve the live dashboard of a store with Voila and print its URL (Ctrl-C stops)."
    location = _location(store)
    _check_port(host, port)
    secret = secrets.token_urlsafe(16) if token or host not in LOOPBACK else ''
    # The viewers' kernels inherit these: the store to show, the folder whose stores `?store=` may open, and that
    # the page loads BokehJS itself.
    os.environ.update(FASTWATCH_STORE=location, FASTWATCH_ROOT=os.getcwd(), FASTWATCH_BOKEHJS='page')
    print(f'fastwatch dashboard of {location}\n  open {dashboard_url(host, port, secret)}', flush=True)
    DashboardServer.launch_instance(argv=voila_argv(port, host, secret))


def _cache_dir() -> Path:
    return Path(os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache') / 'fastwatch'


def _wait_for_port(host: str, port: int, server: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None: raise CliError('the dashboard server stopped: see its message above')
        try:
            with socket.create_connection(('127.0.0.1' if host in ('0.0.0.0', '::') else host, port), timeout=1):
                return
        except OSError: time.sleep(0.2)
    raise CliError(f'the dashboard server did not start within {timeout:.0f} s')


def train_digits(store: str, epochs: int, size: int = 28) -> None:
    "fine_tune an untrained resnet18 on the digits (an image folder made once in the cache), recorded by WatchCallback."
    from .callback import WatchCallback
    from .digits import digits_dls, digits_folder, digits_learner
    dls = digits_dls(digits_folder(_cache_dir() / 'digits'), size=size, bs=32)
    watch = WatchCallback(store=store, name='digits demo', config={'epochs': epochs, 'size': size})
    digits_learner(dls, arch='resnet18', cbs=watch).fine_tune(epochs, base_lr=1e-2)


def demo(epochs: int = 6,  # epochs of fine_tune after its frozen one
         store: str = None,  # store to record into (default: demo.db in ~/.cache/fastwatch)
         port: int = 8866,  # port of the dashboard
         host: str = '127.0.0.1',  # interface the dashboard listens on
         token: bool = False,  # require a token to open the dashboard
         no_serve: bool = False,  # only train, without serving the dashboard
         exit_after: bool = False,  # stop serving when training ends, instead of serving until Ctrl-C
         ) -> None:
    "Train a small classifier on scikit-learn's digits with fine_tune and WatchCallback while serving the dashboard."
    location = store_url(store or _cache_dir() / 'demo.db').removeprefix('sqlite:///')
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stopped like Ctrl-C: the server child stops too
    open_store(location).close()  # create it, so that the dashboard can open it before the first run
    server = None
    if not no_serve:
        _check_port(host, port)
        command = ['serve', '--store', location, '--port', str(port), '--host', host] + (['--token'] if token else [])
        server = subprocess.Popen([sys.executable, '-c', 'from fastwatch.cli import main; main()', *command])
    try:
        if server: _wait_for_port(host, port, server)
        print(f'training on the digits, {epochs} epochs of fine_tune, recording into {location}', flush=True)
        train_digits(location, epochs)
        if server and not exit_after:
            print('the dashboard keeps serving: Ctrl-C to stop', flush=True)
            server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if server and server.poll() is None:
            server.terminate()
            server.wait(10)
