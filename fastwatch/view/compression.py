"""Gzip for the dashboard server that compresses each static file once per server, not once per page view.

A first page view fetches many scripts and stylesheets (Voila's front end, its extensions, BokehJS), which
tornado's own `compress_response` compresses again for every visitor, in the server's only thread, while the page
waits for them (the README's dashboard figures say how much). Static files carry an ETag (a hash of their
content), so their compressed form is kept.
"""
from __future__ import annotations

from tornado.httputil import HTTPHeaders
from tornado.web import GZipContentEncoding


class CachedGzip(GZipContentEncoding):
    "tornado's gzip content encoding, keeping the compressed body of static files (`Etag` and `Last-Modified`)."

    LIMIT = 64 << 20  # bytes of compressed bodies kept, in all
    compressed: dict[str, bytes] = {}  # ETag -> gzip body, shared by the server's requests

    def transform_first_chunk(self, status_code: int, headers: HTTPHeaders, chunk: bytes,
                              finishing: bool) -> tuple[int, HTTPHeaders, bytes]:
        static = status_code == 200 and 'Etag' in headers and 'Last-Modified' in headers
        self._key = headers['Etag'] if static and 'Content-Encoding' not in headers else None
        self._parts: list[bytes] = []
        body = self.compressed.get(self._key) if self._gzipping and self._key else None
        self._replayed = body is not None
        if not self._replayed: return super().transform_first_chunk(status_code, headers, chunk, finishing)
        headers['Vary'] = f"{headers['Vary']}, Accept-Encoding" if 'Vary' in headers else 'Accept-Encoding'
        headers['Content-Encoding'], headers['Content-Length'] = 'gzip', str(len(body))
        return status_code, headers, body

    def transform_chunk(self, chunk: bytes, finishing: bool) -> bytes:
        if self._replayed: return b''  # the whole body went with the first chunk
        chunk = super().transform_chunk(chunk, finishing)
        if self._key and self._gzipping:
            self._parts.append(chunk)
            if finishing: self._keep(b''.join(self._parts))
        return chunk

    def _keep(self, body: bytes) -> None:
        if sum(map(len, self.compressed.values())) + len(body) <= self.LIMIT: self.compressed[self._key] = body
