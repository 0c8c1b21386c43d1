"""What the dashboard under the training cell costs the training: `WatchCallback(show=True)` against
`WatchCallback()` in a real Jupyter kernel, `fine_tune(2)` of the digits CNN, interleaved round by round (each case
first, second and third in turn) with an A/A pair for the noise floor; process CPU and wall time per fit, and the
view's own threads' CPU (thread clocks).

    python benchmarks/bench_notebook.py [--rounds 10]
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import tempfile
import time

from jupyter_client.manager import start_new_kernel

SETUP = """import os, time, threading, torch
from fastwatch import WatchCallback
from fastwatch.demo.digits import digits_dls, digits_folder, digits_learner
torch.set_num_threads(max(1, os.cpu_count() or 2))
dls = digits_dls(digits_folder({folder!r}))

def view_cpu():
    "CPU seconds of the live threads of notebook views: the view's own and its store reads."
    return sum(time.clock_gettime(time.pthread_getcpuclockid(t.ident)) for t in threading.enumerate()
               if t.name.startswith(('fastwatch-notebook', 'fastwatch-read')) and t.ident)

def fit(show):
    learn = digits_learner(dls, cbs=WatchCallback(store={store!r}, show=show))
    wall, cpu, view = time.perf_counter(), time.process_time(), view_cpu()
    with learn.no_bar(), learn.no_logging(): learn.fine_tune(2, base_lr=1e-2)
    wall, cpu, view = time.perf_counter() - wall, time.process_time() - cpu, view_cpu() - view
    return {{'wall': wall, 'cpu': cpu, 'view_cpu': view, 'steps': learn.watch.recording.position.step}}
"""


def execute(client, code: str, timeout: float = 600) -> str:
    "Run `code` in the kernel; what it printed (fails with the kernel's traceback)."
    msg_id, printed = client.execute(code), []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try: msg = client.get_iopub_msg(timeout=1)
        except queue.Empty: continue
        if msg['parent_header'].get('msg_id') != msg_id: continue
        kind, content = msg['msg_type'], msg['content']
        if kind == 'stream': printed.append(content['text'])
        elif kind == 'error': raise RuntimeError('\n'.join(content['traceback']))
        elif kind == 'status' and content['execution_state'] == 'idle': return ''.join(printed)
    raise TimeoutError(code[:80])


def main(rounds: int) -> None:
    manager, client = start_new_kernel(kernel_name='python3')
    results: dict[str, list[dict]] = {'callback': [], 'callback (A/A)': [], 'show=True': []}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            execute(client, SETUP.format(folder=f'{tmp}/digits', store=f'{tmp}/bench.db'))
            execute(client, 'fit(False)')  # warm up: imports, the first fit's compilation
            cases = [('callback', False), ('show=True', True), ('callback (A/A)', False)]
            for round_ in range(rounds):
                for name, show in cases[round_ % 3:] + cases[:round_ % 3]:  # each case first, second, third in turn
                    results[name].append(json.loads(execute(client, f'import json; print(json.dumps(fit({show})))')))
                    time.sleep(1.5)  # the view hands over to the kernel's loop between cells
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    print(f'machine: {os.cpu_count()} cores; {rounds} interleaved rounds of fine_tune(2) in a Jupyter kernel')
    base = results['callback']
    print(f"{'case':<16}{'median wall s':>15}{'median CPU s':>14}{'paired wall':>13}{'paired CPU':>12}")
    for name, rows in results.items():
        wall = statistics.median((r['wall'] - b['wall']) / b['wall'] for r, b in zip(rows, base))
        cpu = statistics.median((r['cpu'] - b['cpu']) / b['cpu'] for r, b in zip(rows, base))
        print(f"{name:<16}{statistics.median(r['wall'] for r in rows):>15.3f}"
              f"{statistics.median(r['cpu'] for r in rows):>14.3f}{100 * wall:>+12.2f}%{100 * cpu:>+11.2f}%")
    shown = results['show=True']
    view = statistics.median(r['view_cpu'] / r['cpu'] for r in shown)
    per_batch = statistics.median(r['view_cpu'] / r['steps'] for r in shown)
    print(f"the view's threads: median {1e3 * statistics.median(r['view_cpu'] for r in shown):.0f} ms CPU a fit = "
          f"{100 * view:.2f}% of the fit's process CPU ({1e6 * per_batch:.0f} us a batch)")


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rounds', type=int, default=10)
    main(parser.parse_args().rounds)
