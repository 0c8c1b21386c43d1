"""`fastwatch serve`: the dashboard notebook served by Voila.

The notebook ships inside the package (`fastwatch/app/dashboard.ipynb`, the same file as the repository's
`apps/dashboard.ipynb`), so `fastwatch serve` works from a wheel.
"""
from __future__ import annotations

import logging
import os
import secrets
import shutil
import socket
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from bokeh.util.paths import bokehjs_path
from jupyter_server.utils import url_path_join
from tornado.ioloop import PeriodicCallback
from tornado.web import HTTPError, StaticFileHandler, authenticated
from traitlets import Float, Int, TraitError
from voila.app import Voila
from voila.shutdown_kernel_handler import VoilaShutdownKernelHandler
from voila.tornado.handler import TornadoVoilaHandler

from ..errors import StoreError, UsageError
from ..links import local_url
from ..remote.fetch import ALLOW_PRIVATE_ENV
from ..store import display_location, open_store, store_url
from .compression import CachedGzip
from .page import DOWNLOADS_ENV, OWNER_ENV
from .places import RETRY_SECONDS, TICKET, Places, waiting_html

APP = Path(__file__).parent / 'app' / 'dashboard.ipynb'
PAGE_SCRIPT = APP.parent / 'static'  # the page's script and style, built from app/page/ (fastwatch-page.js, .css)
BOKEHJS = bokehjs_path()  # BokehJS's own files: js/bokeh.min.js
IDLE_KERNEL_SECONDS = 1800  # Voila culls a kernel idle this long with no page connected (its page went away)
PREHEATED_KERNELS = 2  # kernels that have run the notebook up to the page's query, waiting for the next pages
# A new preheated kernel is started this long after a page takes one, once that page has loaded: starting a kernel
# keeps a CPU core busy, which the page being rendered needs on a small machine (benchmarks/bench_dashboard.py).
REFILL_DELAY_SECONDS = 3
# How long Voila waits for a cell's output once the cell has run (nbclient's default is 4 s). Past it the output is
# dropped and the page never draws: on a machine busy with a training and many pages, waiting longer is the fix.
OUTPUT_WAIT_SECONDS = 120
VIEWER_MB = 150  # what a viewer's kernel may grow to: --max-viewers is sized by it from the machine's memory


def memory_viewers() -> int:
    "How many viewers' kernels half of this machine's memory holds."
    memory = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
    return max(1, memory // 2 // (VIEWER_MB * 2**20))


class TabCloseHandler(VoilaShutdownKernelHandler):
    """Voila's kernel shutdown, which its page sends as the tab closes (`navigator.sendBeacon`) with the `_xsrf`
    field empty (voila issue 1458), so it would be refused: checked to come from this server's own pages (their
    Origin) instead. Every other request keeps Voila's XSRF check."""

    def check_xsrf_cookie(self) -> None:
        origin = self.request.headers.get('Origin')
        if not origin or urlsplit(origin).netloc != self.request.host:
            raise HTTPError(403, 'a kernel is shut down from its own page only')


class PageHandler(TornadoVoilaHandler):
    """Voila's page, rendered when a place is free (`places.Places`); otherwise a small page that says it waits for
    one and asks again by itself. The ticket of a waiting page is taken off the query: the kernel never sees it."""

    @authenticated
    async def get(self, path=None):
        if path:  # a file beside the page (the browser's /favicon.ico): Voila redirects it, no kernel, no place
            await super().get(path)
            return
        server: DashboardServer = self.settings['fastwatch_server']
        ticket = self.get_query_argument(TICKET, None)
        self._forget_ticket()
        viewers = server.viewers()
        admission = server.places.ask(int(ticket) if ticket and ticket.isdigit() else None, viewers,
                                      server.starting)
        if not admission.admitted:
            query = '&'.join(filter(None, [self.request.query, urlencode({TICKET: admission.ticket})]))
            self.set_status(503)
            self.set_header('Retry-After', str(RETRY_SECONDS))
            self.set_header('Cache-Control', 'no-store')
            self.finish(waiting_html(admission, f'{self.request.path}?{query}', viewers, server.places.viewers))
            return
        server.starting += 1
        try: await super().get(path)
        finally: server.starting -= 1

    def _forget_ticket(self) -> None:
        request = self.request
        for arguments in (request.arguments, request.query_arguments): arguments.pop(TICKET, None)
        request.query = urlencode([(k, v.decode()) for k, values in request.query_arguments.items() for v in values])
        request.uri = request.path + (f'?{request.query}' if request.query else '')


class _NotTrusted(logging.Filter):
    "Drops the 'Notebook … is not trusted' warning: the dashboard is fastwatch's own notebook, run as it is."
    def filter(self, record: logging.LogRecord) -> bool: return 'is not trusted' not in str(record.msg)


class DashboardServer(Voila):
    """Voila, compressing what it sends (the page weighs a third; static files are compressed once), shutting the
    kernels of closed and abandoned pages down, and rendering the page with `app/index.html.j2`, whose script
    comes from `/fastwatch/page/` and BokehJS from `/fastwatch/static/`. It logs what a person serving it needs to
    know, nothing of Voila's routine."""

    orphan_timeout = Float(60, config=True, help='seconds a viewer kernel may stay idle with no page connected')
    max_viewers = Int(0, config=True, help='pages the server holds at once (0: as many as half its memory holds); '
                                           'more wait for a place')
    max_starting = Int(0, config=True, help='pages rendered at once (0: two per CPU core); more wait for a place')

    def initialize(self, argv=None) -> None:
        super().initialize(argv)
        self.log.addFilter(_NotTrusted())

    def init_settings(self) -> dict:
        settings = super().init_settings()
        settings.update(transforms=[CachedGzip], websocket_compression_options={}, fastwatch_server=self)
        self.places = Places(self.max_viewers or memory_viewers(), self.max_starting or 2 * (os.cpu_count() or 1))
        self.starting = 0  # pages being rendered now
        return settings

    def viewers(self) -> int:
        """The pages this server holds: those being rendered, and the kernels of those rendered, connected to their
        page or idle waiting for it (or abandoned, until shut down). The others are preheated kernels, busy waiting
        for a page."""
        return self.starting + sum(1 for model in _started_kernels(self.kernel_manager)
                                   if model['connections'] or model['execution_state'] == 'idle')

    def setup_template_dirs(self) -> None:
        super().setup_template_dirs()
        self.template_paths.insert(0, str(APP.parent))  # its index.html.j2: the page

    def init_handlers(self) -> list:
        ours = {VoilaShutdownKernelHandler: TabCloseHandler, TornadoVoilaHandler: PageHandler}
        handlers = [(pattern, ours.get(handler, handler), *rest) for pattern, handler, *rest in super().init_handlers()]
        static = {'/fastwatch/static/(.*)': BOKEHJS, '/fastwatch/page/(.*)': str(PAGE_SCRIPT)}
        return [*((url_path_join(self.server_url, route), StaticFileHandler, {'path': path})
                  for route, path in static.items()), *handlers]

    def listen(self) -> None:
        self._alone_since: dict[str, float] = {}
        PeriodicCallback(self._shut_abandoned_kernels_down, 1000).start()
        super().listen()

    async def _shut_abandoned_kernels_down(self) -> None:
        """Shut down the kernels of pages that went away without closing (a browser that crashed, a phone that lost
        its network): idle, with no page connected, for `orphan_timeout` s. Preheated kernels are busy waiting
        for a page, and a page's kernel is busy until its page is rendered."""
        manager, now = self.kernel_manager, time.monotonic()
        self._alone_since = {m['id']: self._alone_since.get(m['id'], now) for m in _started_kernels(manager)
                             if not m['connections'] and m['execution_state'] == 'idle'}
        for kernel_id, since in list(self._alone_since.items()):
            if now - since > self.orphan_timeout: await manager.shutdown_kernel(kernel_id)


def _started_kernels(manager) -> list[dict]:
    "The models of the manager's kernels that have started: one still starting has no last activity to report."
    models = []
    for kernel_id in manager.list_kernel_ids():
        try: models.append(manager.kernel_model(kernel_id))
        except TraitError: continue
    return models


def voila_argv(port: int, host: str, token: str, max_viewers: int = 0) -> list[str]:
    "Voila's command line for the dashboard: preheated kernels (the page is ready sooner), idle ones culled."
    return [str(APP), '--no-browser', f'--port={port}', f'--Voila.ip={host}', f'--token={token}',
            '--preheat_kernel=True', f'--pool_size={PREHEATED_KERNELS}',
            f'--VoilaKernelManager.fill_delay={REFILL_DELAY_SECONDS}', '--Voila.log_level=WARN',
            f'--MappingKernelManager.cull_idle_timeout={IDLE_KERNEL_SECONDS}',
            '--MappingKernelManager.cull_interval=60',
            '--KernelManager.transport=ipc',  # local sockets: no kernel traffic on TCP, and no warning that there is
            f'--VoilaExecutor.iopub_timeout={OUTPUT_WAIT_SECONDS}',
            *([f'--DashboardServer.max_viewers={max_viewers}'] if max_viewers else [])]


def _checked_url(store: str | None) -> str:
    "The store's SQLAlchemy URL, checked to be a readable fastwatch store."
    url = store_url(store)
    try: open_store(url, readonly=True).close()
    except StoreError as e:
        raise StoreError(f'{e} (record a run with WatchCallback first, or try fastwatch demo)') from None
    return url


def check_port(host: str, port: int) -> None:
    "Fail with a one-line `UsageError` when `host:port` cannot be listened on."
    with socket.socket(socket.AF_INET6 if ':' in host else socket.AF_INET) as sock:
        try: sock.bind((host, port))
        except OSError as e:
            raise UsageError(f'cannot listen on {host}:{port} ({e.strerror}): pick another --port') from None


def dashboard_url(host: str, port: int, token: str, run: str | None = None) -> str:
    "The URL to open for a server listening on `host`, with its token (and the run to show, if one is named)."
    name = socket.gethostname() if host in ('0.0.0.0', '::', '') else host
    url = local_url(f'http://{name}:{port}/', run)
    return url + ('&' if '?' in url else '?') + f'token={token}'


def _root_folder(root: str | None) -> str:
    "`--root` as the kernels are told it: the folder, resolved, or '' for none."
    if root is None: return ''
    folder = Path(root).expanduser().resolve()
    if not folder.is_dir(): raise UsageError(f'--root {root} is not a folder')
    return str(folder)


def serve(store: str = None,  # store path or URL (default: $FASTWATCH_STORE, then ./fastwatch.db)
          port: int = 8866,  # port to listen on
          host: str = '127.0.0.1',  # interface to listen on
          root: str = None,  # folder whose store files a page may open with ?store=PATH (default: none)
          allow_private_urls: bool = False,  # let ?store=https://... fetch from loopback and private addresses
          run: str = None,  # the run the printed URL opens (default: the page shows the newest)
          max_viewers: int = 0,  # pages open at once; more wait for a place (default: as many as half the memory holds)
          ) -> None:
    """Serve the live dashboard of a store with Voila and print its URL, with the token it requires (Ctrl-C
    stops)."""
    url = _checked_url(store)
    check_port(host, port)
    if max_viewers < 0: raise UsageError(f'--max-viewers takes a number of pages, not {max_viewers}')
    folder, secret = _root_folder(root), secrets.token_urlsafe(24)
    downloads = tempfile.mkdtemp(prefix='fastwatch-serve-')  # 0700, this server's alone
    ipython = quiet_kernels()
    # The viewers' kernels inherit these: the store to show, the folder whose stores `?store=` may open, where
    # they download remote stores, whether those may be on private networks, that the page loads BokehJS, that
    # the served store's pages are its owner's (who may decide about items), and an IPython folder of their own
    # whose kernel config keeps their logs out of this terminal.
    os.environ.update({'FASTWATCH_STORE': url, 'FASTWATCH_ROOT': folder, DOWNLOADS_ENV: downloads,
                       ALLOW_PRIVATE_ENV: '1' if allow_private_urls else '0', 'FASTWATCH_BOKEHJS': 'page',
                       OWNER_ENV: '1', 'IPYTHONDIR': ipython})
    print(f'fastwatch dashboard of {display_location(url)}\n  open {dashboard_url(host, port, secret, run)}\n'
          '  Ctrl-C stops it', flush=True)
    try: DashboardServer.launch_instance(argv=voila_argv(port, host, secret, max_viewers))
    except KeyboardInterrupt: pass
    finally:
        for private in (downloads, ipython): shutil.rmtree(private, ignore_errors=True)


def quiet_kernels() -> str:
    """A new IPython folder (0700) whose kernels log only what is critical: a viewer's page shows its own errors,
    and the terminal of `fastwatch serve` is for its URL. Returns the folder."""
    folder = tempfile.mkdtemp(prefix='fastwatch-kernels-')
    profile = Path(folder) / 'profile_default'
    profile.mkdir()
    (profile / 'ipython_kernel_config.py').write_text("c.IPKernelApp.log_level = 'CRITICAL'\n")
    return folder
