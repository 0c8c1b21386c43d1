"""For the publish, follow and alert tests: a real WebDAV server (wsgidav on cheroot) over https (with a certificate
from `browser.self_signed_certificate`) serving a local folder, which can be stopped and restarted on its port,
answer 500 to everything, or refuse writes, as failing upload targets do; and a local receiver of JSON alerts."""
from __future__ import annotations

import http.server
import json
import threading
from contextlib import contextmanager
from pathlib import Path

from browser import free_port

WRITES = ('PUT', 'MOVE', 'COPY', 'MKCOL', 'DELETE', 'PROPPATCH', 'LOCK')


class Faulty:
    """A WSGI middleware: `mode` None passes requests on, 'error' answers 500, 'readonly' refuses writes with 403;
    `requests` lists [method, path, request body bytes, status] of each."""

    def __init__(self, app):
        self.app, self.mode, self.requests = app, None, []

    def __call__(self, environ, start_response):
        method = environ['REQUEST_METHOD']
        request = [method, environ.get('PATH_INFO'), int(environ.get('CONTENT_LENGTH') or 0), None]
        self.requests.append(request)

        def respond(status, headers, *args):
            request[3] = int(status.split()[0])
            return start_response(status, headers, *args)
        if self.mode == 'error' or (self.mode == 'readonly' and method in WRITES):
            status = '500 Internal Server Error' if self.mode == 'error' else '403 Forbidden'
            respond(status, [('Content-Type', 'text/plain'), ('Content-Length', '0')])
            return [b'']
        return self.app(environ, respond)


class DavServer:
    "wsgidav serving `folder` at `https://127.0.0.1:PORT/` (anonymous, read and write) on a thread."

    def __init__(self, folder: Path, cert: Path, key: Path):
        from wsgidav.wsgidav_app import WsgiDAVApp
        self.folder, self.cert, self.key, self.port = folder, cert, key, free_port()
        self.url = f'https://127.0.0.1:{self.port}/'
        config = {'host': '127.0.0.1', 'port': self.port, 'provider_mapping': {'/': str(folder)},
                  'simple_dc': {'user_mapping': {'*': True}}, 'verbose': 0, 'logging': {'enable': False},
                  'dir_browser': {'enable': False}, 'property_manager': True, 'lock_storage': True}
        self.app = Faulty(WsgiDAVApp(config))
        self.server = None
        self.start()

    def start(self) -> None:
        from cheroot import wsgi
        from cheroot.ssl.builtin import BuiltinSSLAdapter
        self.server = wsgi.Server(('127.0.0.1', self.port), self.app, numthreads=4)
        self.server.ssl_adapter = BuiltinSSLAdapter(str(self.cert), str(self.key))
        self.server.prepare()
        threading.Thread(target=self.server.serve, daemon=True).start()

    def stop(self) -> None:
        self.server.stop()


@contextmanager
def dav_server(folder: Path, certificate: tuple[Path, Path]):
    "A `DavServer` for the duration."
    folder.mkdir(parents=True, exist_ok=True)
    server = DavServer(folder, *certificate)
    try: yield server
    finally: server.stop()


class Receiver(http.server.ThreadingHTTPServer):
    "A local HTTP server that keeps the JSON bodies posted to it: apprise's `json://127.0.0.1:PORT` target."

    def __init__(self):
        self.received: list[dict] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get('Content-Length') or 0))
                receiver.received.append(json.loads(body))
                self.send_response(200)
                self.send_header('Content-Length', '0')
                self.end_headers()

            def log_message(self, *args): pass
        super().__init__(('127.0.0.1', 0), Handler)
        self.url = f'json://127.0.0.1:{self.server_address[1]}'
        threading.Thread(target=self.serve_forever, daemon=True).start()
