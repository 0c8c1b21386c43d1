"""What an open page costs the store and its kernel, the dashboard following the store as in a viewer's kernel
(`Dashboard.start()` on an asyncio loop), side by side in one run:

- a finished run, nothing recording (an idle page);
- a live run, a fine_tune of the digits CNN recording it in another process;
- a finished run while that training records another run (the run list and the runs table follow it).

For each, over `--seconds`: the store queries per second (every statement the page's engine executes, counted
with SQLAlchemy's `before_cursor_execute`) and the CPU the page uses (this process's CPU seconds per second: the
follow loop and its reads' thread). A kernel also sends what changed to its page, which is not counted here.

    python benchmarks/bench_idle.py [--seconds 30]
"""
from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from sqlalchemy import event

sys.path.insert(0, str(Path(__file__).parents[1] / 'tests'))
from browser import train_in_background  # noqa: E402
from helpers import wait_for  # noqa: E402

from fastwatch import open_store  # noqa: E402
from fastwatch.demo.digits import digits_folder  # noqa: E402
from fastwatch.view.dashboard import Dashboard  # noqa: E402


def page_cost(store_path: Path, run_id: str, seconds: float) -> tuple[float, float, list[str]]:
    "Queries per second and CPU seconds per second of a dashboard of `run_id` following the store for `seconds`."
    view = Dashboard(open_store(store_path, readonly=True), run_id)
    statements: list[str] = []
    event.listen(view.store.engine, 'before_cursor_execute', lambda *args: statements.append(args[2]))

    async def follow() -> float:
        view.start()
        cpu = time.process_time()
        await asyncio.sleep(seconds)
        used = time.process_time() - cpu
        view.task.cancel()
        return used
    used = asyncio.run(follow())
    view.store.close()
    return len(statements) / seconds, used / seconds, statements


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--seconds', type=float, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        digits, store = digits_folder(folder / 'digits'), folder / 'store.db'
        assert train_in_background(digits, store, epochs=1, name='finished').wait() == 0
        finished = open_store(store, readonly=True).runs()[0].id
        cases = {'finished run, nothing recording': page_cost(store, finished, args.seconds)}
        trainer = train_in_background(digits, store, epochs=200, name='live')
        try:
            live = wait_for(lambda: next((r.id for r in open_store(store, readonly=True).runs() if r.state == 'live'),
                                         None), timeout=120)
            cases['live run, recording'] = page_cost(store, live, args.seconds)
            cases['finished run, another recording'] = page_cost(store, finished, args.seconds)
            assert trainer.poll() is None, 'the training ended before the last measurement'
        finally:
            trainer.kill()
    print(f'one open page, over {args.seconds:.0f} s each:')
    for case, (queries, cpu, statements) in cases.items():
        tables = Counter(found[1] for s in statements if (found := re.search(r'\bFROM\s+(\w+)', s)))
        read = ', '.join(f'{table} {count / args.seconds:.1f}/s' for table, count in tables.most_common())
        print(f'  {case:<34} {queries:5.1f} queries/s  {cpu:5.1%} of a core  ({read})')


if __name__ == '__main__':
    main()
