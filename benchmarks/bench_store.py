"""The store's speed: batch rows per second through the background writer (SQLite, and PostgreSQL when
$FASTWATCH_TEST_POSTGRES is reachable), and `batches_downsampled` on a 1,000,000-step run.

    python benchmarks/bench_store.py [--rows 1000000]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from fastwatch import open_store
from fastwatch.record.writer import Writer
from fastwatch.store import RunInfo, RunRecord
from fastwatch.store.tables import BatchRow


def write_run(location, run_id: str, n_rows: int) -> float:
    "Seconds from the first `add_batch` until the writer has committed all `n_rows` rows."
    writer = Writer.for_store(location)
    now = time.time()
    writer.start_run(RunRecord.new(run_id, 'bench', RunInfo(), {}, None, now))
    assert writer.flush(timeout=60)
    start = time.perf_counter()
    for step in range(n_rows):
        loss = 1.0 / (1 + step) + (step % 7) * 1e-3
        writer.add_batch(BatchRow(run_id, step, step // 10_000, 0, False, loss, loss, 1e-3, 0.9, now, None))
    writer.end_run(run_id, 'finished')
    assert writer.flush(timeout=600)
    return time.perf_counter() - start


def bench(location, label: str, n_rows: int) -> None:
    seconds = write_run(location, 'bench', n_rows)
    print(f'{label}: {n_rows:,} batch rows written through the background writer in {seconds:.2f} s = '
          f'{n_rows / seconds:,.0f} rows/s')
    store = open_store(location, readonly=True)
    times = []
    for _ in range(7):
        start = time.perf_counter()
        down = store.batches_downsampled('bench', n=2000)
        times.append(time.perf_counter() - start)
    points = len(down['series']['loss']['step'])
    print(f'{label}: batches_downsampled(n=2000) on {n_rows:,} steps: median {1000 * statistics.median(times):.1f} ms, '
          f'min {1000 * min(times):.1f} ms, {points} loss points')
    start = time.perf_counter()
    tail = store.batches('bench', since=n_rows - 101)
    print(f'{label}: batches(since=cursor) for the last 100 rows: {1000 * (time.perf_counter() - start):.2f} ms '
          f'({len(tail["step"])} rows)')


def main(n_rows: int) -> None:
    print(f'machine: {os.cpu_count()} cores')
    with tempfile.TemporaryDirectory() as tmp:
        bench(Path(tmp) / 'bench.db', 'SQLite', n_rows)
    url = os.environ.get('FASTWATCH_TEST_POSTGRES')
    if url:
        import uuid

        from sqlalchemy import create_engine
        schema = f'bench_{uuid.uuid4().hex[:8]}'
        engine = create_engine(url.replace('postgresql://', 'postgresql+psycopg://'))
        with engine.begin() as conn: conn.exec_driver_sql(f'CREATE SCHEMA {schema}')
        try: bench(f'{url}?options=-csearch_path%3D{schema}', 'PostgreSQL', n_rows // 5)
        finally:
            with engine.begin() as conn: conn.exec_driver_sql(f'DROP SCHEMA {schema} CASCADE')


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--rows', type=int, default=1_000_000)
    main(parser.parse_args().rows)
