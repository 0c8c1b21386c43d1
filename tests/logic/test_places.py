"""Places for viewers: who is rendered now, who waits, and in which order."""
from fastwatch.view import places
from fastwatch.view.places import Places, waiting_html


def test_pages_wait_in_the_order_they_came_and_go_in_when_a_place_frees():
    queue = Places(viewers=2, starting=1)
    assert queue.ask(None, viewers=0, starting=0).admitted
    second = queue.ask(None, viewers=1, starting=1)  # one page is being rendered: the next waits
    third = queue.ask(None, viewers=1, starting=1)
    assert (second.admitted, second.ahead, third.admitted, third.ahead) == (False, 0, False, 1)
    assert not queue.ask(None, viewers=1, starting=0).admitted  # a newcomer queues behind them
    assert not queue.ask(third.ticket, viewers=1, starting=0).admitted  # not its turn
    assert queue.ask(second.ticket, viewers=1, starting=0).admitted
    assert not queue.ask(third.ticket, viewers=2, starting=0).admitted  # the server holds 2 pages: the most
    assert queue.ask(third.ticket, viewers=1, starting=0).admitted


def test_a_ticket_not_asked_for_again_is_a_closed_page_and_its_place_goes_to_the_next(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(places.time, 'monotonic', lambda: now[0])
    queue = Places(viewers=1, starting=1)
    gone, waiting = queue.ask(None, 1, 0), queue.ask(None, 1, 0)
    now[0] += places.FORGOTTEN_SECONDS / 2
    assert queue.ask(waiting.ticket, 1, 0).ahead == 1
    now[0] += places.FORGOTTEN_SECONDS / 2 + 1
    assert queue.ask(waiting.ticket, 0, 0).admitted and gone.ticket not in queue.waiting


def test_the_waiting_page_says_why_and_escapes_the_url():
    page = waiting_html(Places(1, 1).ask(None, 1, 0), "/?run=<x>&wait=1", viewers=1, most=1)
    assert 'the most it holds (fastwatch serve --max-viewers 1)' in page and 'it is next' in page
    assert '<x>' not in page and "url=/?run=&lt;x&gt;&amp;wait=1'" in page
