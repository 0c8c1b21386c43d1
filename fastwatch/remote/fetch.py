"""Fetching a file from an https URL a viewer (or a followed run) names, without letting the URL reach further.

Only https, redirects re-checked hop by hop, hosts on loopback, private, link-local or reserved networks refused
(unless `$FASTWATCH_ALLOW_PRIVATE_URLS` is 1: `fastwatch serve --allow-private-urls`), the connection made to the
address that was checked (a second DNS answer cannot point it elsewhere), one deadline for the whole download, and
a size limit counted as the body streams into a new file of its own in `dest_dir`. Error messages say what went
wrong in fastwatch's words: nothing the remote server sent is repeated, and no local path is named.
Certificates are checked against the system's authorities, or `$SSL_CERT_FILE`.
"""
from __future__ import annotations

import http.client
import ipaddress
import os
import socket
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from ..errors import FetchError

ALLOW_PRIVATE_ENV = 'FASTWATCH_ALLOW_PRIVATE_URLS'
MAX_REDIRECTS = 5
CHUNK = 64 * 1024
REDIRECTS = (301, 302, 303, 307, 308)


@dataclass(frozen=True)
class FetchResult:
    "A finished download: its file (None when the server answered 304 Not Modified) and its validators."
    path: Path | None
    etag: str | None
    last_modified: str | None


def allow_private() -> bool:
    "Whether hosts on loopback and private networks may be fetched (`fastwatch serve --allow-private-urls`)."
    return os.environ.get(ALLOW_PRIVATE_ENV) == '1'


def shown(url: str) -> str:
    "A URL as messages name it: scheme, host and path, no credentials or query, at most 120 characters."
    try: parts = urlsplit(url)
    except ValueError: return 'that URL'
    text = f'{parts.scheme}://{parts.hostname or ""}{parts.path}' if parts.scheme else url
    text = ''.join(c if c.isprintable() else '?' for c in text)
    return text if len(text) <= 120 else text[:119] + '…'


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split('%', 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped: ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


class _Refused(Exception):
    "Why a URL is not fetched, in fastwatch's words (the message's reason, after the URL)."


def _resolve(host: str, port: int, seconds: float) -> list[str]:
    "The host's addresses, waited for at most `seconds` (a lookup cannot be interrupted: its thread is left to end)."
    found: dict = {}
    done = threading.Event()

    def lookup() -> None:
        try: found['addresses'] = [info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]
        except (OSError, UnicodeError): pass
        finally: done.set()
    threading.Thread(target=lookup, daemon=True).start()
    if not done.wait(max(seconds, 0)): raise TimeoutError
    if 'addresses' not in found: raise _Refused('its host is not found')
    return found['addresses']


def _target(url: str, private: bool, deadline: float) -> tuple[str, int, str, str]:
    "Host, port, path and the checked address to connect to, for an https URL; `_Refused` for any other."
    try:
        parts = urlsplit(url)
        port = parts.port or 443
    except ValueError: raise _Refused('it is not a valid URL') from None
    if parts.scheme.lower() != 'https': raise _Refused('only https URLs are fetched')
    if not parts.hostname: raise _Refused('it names no host')
    addresses = _resolve(parts.hostname, port, deadline - time.monotonic())
    if not private and not all(_public(a) for a in addresses):
        raise _Refused('its host is on a loopback, private or reserved network')
    path = (parts.path or '/') + (f'?{parts.query}' if parts.query else '')
    return parts.hostname, port, path, addresses[0]


class _CheckedHTTPS(http.client.HTTPSConnection):
    "An https connection to `host` made to the address that was checked, not to a fresh DNS answer."

    def __init__(self, host: str, port: int, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        # `tls` is the socket, kept: http.client lets go of it once a response owns it; `late`: the deadline passed.
        self.address, self.tls, self.late = address, None, False

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self.tls = self._context.wrap_socket(sock, server_hostname=self.host)
        if self.late: raise TimeoutError  # the deadline passed while connecting

    def cut(self) -> None:
        "Stop a read in progress in another thread: shut the TCP socket itself down, under its TLS layer."
        self.late = True
        if self.tls is not None:
            try: socket.socket.shutdown(self.tls, socket.SHUT_RDWR)
            except OSError: pass


def _download(response: http.client.HTTPResponse, dest_dir: Path, max_bytes: int, deadline: float) -> Path:
    too_big = _Refused(f'it is larger than the {max_bytes / 2**20:g} MB limit')
    length = response.getheader('Content-Length')
    if length and length.strip().isdigit() and int(length) > max_bytes: raise too_big
    try: fd, name = tempfile.mkstemp(prefix='download-', dir=dest_dir)  # O_EXCL, 0600: a new file, never a link
    except OSError as e: raise _Refused(f'its download folder is not writable ({e.strerror})') from None
    path, size = Path(name), 0
    try:
        with os.fdopen(fd, 'wb') as f:
            while chunk := response.read(CHUNK):
                size += len(chunk)
                if size > max_bytes: raise too_big
                if time.monotonic() > deadline: raise TimeoutError
                f.write(chunk)
        if time.monotonic() > deadline: raise TimeoutError  # cut off at the deadline, the body looks complete
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def fetch(url: str, dest_dir: str | os.PathLike, *, max_bytes: int, timeout: float, etag: str | None = None,
          last_modified: str | None = None, private: bool | None = None) -> FetchResult:
    """Download the https `url` into a new file in `dest_dir`, within `timeout` seconds in all and `max_bytes`.
    With `etag` or `last_modified` (from an earlier `FetchResult`) the request is conditional, and a 304 gives a
    result whose `path` is None. `private` allows loopback and private hosts (default: `allow_private()`).
    Raises `FetchError` with a one-line message."""
    private = allow_private() if private is None else private
    where, deadline = shown(url), time.monotonic() + timeout
    try: return _fetch(url, Path(dest_dir), max_bytes, deadline, private, etag, last_modified)
    except _Refused as e: reason = str(e)
    except ssl.SSLCertVerificationError: reason = 'its certificate cannot be verified'
    except (OSError, http.client.HTTPException, ValueError): reason = 'the connection failed or its answer is not HTTP'
    if time.monotonic() > deadline: reason = f'it took more than {timeout:g} s'
    raise FetchError(f'cannot fetch {where}: {reason}')


def _fetch(url: str, dest_dir: Path, max_bytes: int, deadline: float, private: bool, etag: str | None,
           last_modified: str | None) -> FetchResult:
    headers = {'Accept-Encoding': 'identity', 'User-Agent': 'fastwatch'}
    if etag: headers['If-None-Match'] = etag
    if last_modified: headers['If-Modified-Since'] = last_modified
    for hop in range(MAX_REDIRECTS + 1):
        try: host, port, path, address = _target(url, private, deadline)
        except _Refused as e:
            if hop: raise _Refused(f'it redirects to a URL that is refused: {e}') from None
            raise
        connection = _CheckedHTTPS(host, port, address, timeout=max(deadline - time.monotonic(), 0.001))
        watchdog = threading.Timer(max(deadline - time.monotonic(), 0), connection.cut)
        watchdog.start()
        try:
            connection.request('GET', path, headers=headers)
            response = connection.getresponse()
            if connection.late: raise TimeoutError  # cut off at the deadline, the headers look complete
            if response.status in REDIRECTS and response.getheader('Location'):
                url = urljoin(url, response.getheader('Location'))
                continue
            validators = response.getheader('ETag'), response.getheader('Last-Modified')
            if response.status == 304 and (etag or last_modified):
                return FetchResult(None, validators[0] or etag, validators[1] or last_modified)
            if response.status != 200: raise _Refused(f'the server answered {response.status}')
            return FetchResult(_download(response, dest_dir, max_bytes, deadline), *validators)
        finally:
            watchdog.cancel()
            connection.close()
    raise _Refused(f'it redirects more than {MAX_REDIRECTS} times')
