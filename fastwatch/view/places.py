"""Places for viewers on one `fastwatch serve`: a page is rendered while the server holds fewer than `viewers` pages
and fewer than `starting` of them are being started at once; any other page gets a small page that says it waits,
how many pages are ahead of it, and asks again every `RETRY_SECONDS` s. First come, first served: a waiting page
keeps its ticket (`?wait=N`, which the server takes off the query before the kernel sees it)."""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

from .html import escape

RETRY_SECONDS = 2
TICKET = 'wait'  # the query parameter of a waiting page's ticket
# A ticket not asked for again this long is a closed page: many retries long, so that a page whose browser is too busy
# to ask in time keeps its place.
FORGOTTEN_SECONDS = 15 * RETRY_SECONDS


@dataclass
class Admission:
    "What `Places.ask` decided: whether the page is rendered now, else its ticket and the pages ahead of it."
    admitted: bool
    ticket: int = 0
    ahead: int = 0


@dataclass
class Places:
    """The queue of pages waiting for a place. `viewers`: the most pages the server holds (each with its kernel);
    `starting`: the most pages rendered at once (their kernels start, run the notebook and send the page)."""
    viewers: int
    starting: int
    waiting: dict[int, float] = field(default_factory=dict)  # ticket -> when its page last asked
    tickets: itertools.count = field(default_factory=lambda: itertools.count(1))

    def ask(self, ticket: int | None, viewers: int, starting: int) -> Admission:
        """A page asks for a place, with its ticket if it waited already, while `viewers` pages are held and
        `starting` of them are being rendered."""
        now = time.monotonic()
        self.waiting = {t: at for t, at in self.waiting.items() if now - at < FORGOTTEN_SECONDS}
        if ticket not in self.waiting:
            if not self.waiting and viewers < self.viewers and starting < self.starting: return Admission(True)
            ticket = next(self.tickets)
        self.waiting[ticket] = now
        ahead = sum(t < ticket for t in self.waiting)
        if ahead == 0 and viewers < self.viewers and starting < self.starting:
            del self.waiting[ticket]
            return Admission(True)
        return Admission(False, ticket, ahead)


def waiting_html(admission: Admission, retry_url: str, viewers: int, most: int) -> str:
    "The page of a page that waits for a place: it says so, and asks again by itself."
    ahead = (f'{admission.ahead} page{"s" * (admission.ahead != 1)} ahead of it' if admission.ahead
             else 'it is next')
    held = (f'{viewers} pages are open on this server, the most it holds (fastwatch serve --max-viewers {most})'
            if viewers >= most else 'other pages are being opened on this server')
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>fastwatch: waiting for a place</title>"
            f"<meta http-equiv='refresh' content='{RETRY_SECONDS};url={escape(retry_url)}'></head>"
            "<body style='font-family: sans-serif; margin: 2em'><h3>fastwatch dashboard</h3>"
            f"<p class='fw-waiting'>Waiting for a place: {escape(held)}. This page opens by itself when one is "
            f'free; {ahead}.</p></body></html>')
