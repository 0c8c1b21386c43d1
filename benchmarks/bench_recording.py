"""What recording costs training: fine_tune wall time with WatchCallback against no callback, fastai's CSVLogger
and TensorBoardCallback, interleaved round by round, with an A/A pair for the noise floor; the callback's own
time in the training thread; process CPU time (which includes the writer thread); WatchCallback() (per-item dynamics
on, the default) against WatchCallback(dynamics=False), paired in the same rounds with an A/A pair of its own; and the
cost of collecting the confusion matrix and top losses during the validation pass against
ClassificationInterpretation.

    python benchmarks/bench_recording.py [--rounds 10] [--epochs 2]
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from fastai.callback.progress import CSVLogger
from fastai.callback.tensorboard import TensorBoardCallback
from fastai.data.core import DataLoaders
from fastai.interpret import ClassificationInterpretation
from fastai.vision.all import CrossEntropyLossFlat, Learner, error_rate, nn, params

from fastwatch import WatchCallback
from fastwatch.demo.digits import digits_dls, digits_folder, digits_learner


class TimedWatchCallback(WatchCallback):
    """WatchCallback that adds up the time its events take in the training thread, per event name: wall time
    (`perf_counter`) and the thread's own CPU time (`thread_time`, which time slices lost to other processes on a
    busy machine do not inflate)."""
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.spent: dict[str, float] = {}
        self.spent_cpu: dict[str, float] = {}

    def __call__(self, event_name):
        start, start_cpu = time.perf_counter(), time.thread_time()
        result = super().__call__(event_name)
        if event_name == 'after_batch': event_name += ' train' if self.learn.training else ' valid'
        self.spent[event_name] = self.spent.get(event_name, 0.0) + time.perf_counter() - start
        self.spent_cpu[event_name] = self.spent_cpu.get(event_name, 0.0) + time.thread_time() - start_cpu
        return result


def thread_cpu(thread) -> float:
    "The CPU seconds a running thread (the writer's) has used so far."
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


def pct(x: float) -> str: return f'{100 * x:+.2f}%'


def spent_by_kind(spent: dict[str, float]) -> dict[str, float]:
    "The callback's time grouped: the per-batch training path, the validation pass, fit start and end."
    kinds = {'training batches (after_batch train + other batch events)': 0.0,
             'validation (collect, confusion, top losses)': 0.0, 'fit start and end (run record, final flush)': 0.0}
    names = list(kinds)
    for event, seconds in spent.items():
        kind = (names[1] if event in ('before_validate', 'after_batch valid', 'after_validate')
                else names[2] if event in ('before_fit', 'after_fit', 'before_train', 'after_create')
                else names[0])
        kinds[kind] += seconds
    return kinds


def spent_by_event_kind(spent: dict[str, float]) -> dict[str, float]:
    "The callback's time grouped finer than `spent_by_kind`: the training batches' after_batch apart from epoch ends."
    kinds = {'  training batches: after_batch train': 0.0, '  training batches: other batch events': 0.0,
             '  epoch ends (after_train, after_epoch)': 0.0, '  validation (collect, confusion, top losses)': 0.0,
             '  fit start and end (run record, final flush)': 0.0}
    names = list(kinds)
    for event, seconds in spent.items():
        kind = (names[0] if event == 'after_batch train'
                else names[2] if event in ('before_epoch', 'after_train', 'after_epoch')
                else names[3] if event in ('before_validate', 'after_batch valid', 'after_validate')
                else names[4] if event in ('before_fit', 'after_fit', 'before_train', 'after_create')
                else names[1])
        kinds[kind] += seconds
    return kinds


def tensor_dls(bs: int = 64) -> DataLoaders:
    "The digits as in-memory tensors (64 pixels each): no image decoding, so a step of a small MLP takes ~1 ms."
    from sklearn.datasets import load_digits
    digits = load_digits()
    x, y = torch.tensor(digits.data, dtype=torch.float32) / 16, torch.tensor(digits.target)
    items = list(zip(x, y))
    return DataLoaders.from_dsets(items[:1440], items[1440:], bs=bs, num_workers=0)


def mlp_learner(dls: DataLoaders, cbs) -> Learner:
    model = nn.Sequential(nn.Sequential(nn.Linear(64, 128), nn.ReLU()), nn.Linear(128, 10))
    return Learner(dls, model, loss_func=CrossEntropyLossFlat(), metrics=error_rate, cbs=cbs,
                   splitter=lambda m: [params(m[0]), params(m[1])])


def run_case(dls, arch: str, make_cbs, epochs: int) -> tuple[float, float, list]:
    learn = mlp_learner(dls, make_cbs()) if arch == 'mlp' else digits_learner(dls, arch=arch, cbs=make_cbs())
    wall, cpu = time.perf_counter(), time.process_time()
    with learn.no_bar(), learn.no_logging(): learn.fine_tune(epochs)
    return time.perf_counter() - wall, time.process_time() - cpu, learn


# The cases whose callback's own time is counted: WatchCallback as it comes (dynamics on), and without dynamics.
ON, OFF, OFF_AA = 'WatchCallback', 'WatchCallback(dynamics=False)', 'WatchCallback(dynamics=False) (A/A)'
TIMED = (ON, OFF, OFF_AA)
SHOWN = ('none', 'none (A/A)', 'WatchCallback', 'CSVLogger', 'TensorBoardCallback')  # the first table's cases


def bench_overhead(dls, arch: str, rounds: int, epochs: int, work: Path) -> None:
    cases = {
        'none': lambda: [],
        'none (A/A)': lambda: [],
        'WatchCallback': lambda: [TimedWatchCallback(store=work / f'{arch}.db')],
        OFF: lambda: [TimedWatchCallback(store=work / f'{arch}-off.db', dynamics=False)],
        OFF_AA: lambda: [TimedWatchCallback(store=work / f'{arch}-off-aa.db', dynamics=False)],
        'CSVLogger': lambda: [CSVLogger(fname=str(work / 'history.csv'))],
        'TensorBoardCallback': lambda: [TensorBoardCallback(log_dir=str(work / 'tb'), trace_model=False,
                                                         log_preds=arch != 'mlp')],  # fastai logs image preds only
    }
    wall = {name: [] for name in cases}
    cpu = {name: [] for name in cases}
    spent = {name: {} for name in TIMED}
    spent_cpu = {name: {} for name in TIMED}
    writer_cpu, writers, steps = dict.fromkeys(TIMED, 0.0), dict.fromkeys(TIMED), 0
    run_case(dls, arch, lambda: [], 1)  # warm-up
    for _ in range(rounds):
        for name, make in cases.items():
            # The writer thread lives on between rounds (one per store and process): count its CPU per round.
            writer = writers.get(name)
            writer_before = thread_cpu(writer._thread) if writer is not None else 0.0
            seconds, cpu_seconds, learn = run_case(dls, arch, make, epochs)
            wall[name].append(seconds); cpu[name].append(cpu_seconds)
            if name in TIMED:
                watch = next(cb for cb in learn.cbs if isinstance(cb, TimedWatchCallback))
                for event, seconds in watch.spent.items():
                    spent[name][event] = spent[name].get(event, 0.0) + seconds
                for event, seconds in watch.spent_cpu.items():
                    spent_cpu[name][event] = spent_cpu[name].get(event, 0.0) + seconds
                writers[name] = watch.writer
                writer_cpu[name] += thread_cpu(watch.writer._thread) - writer_before
        steps += (epochs + 1) * (len(dls.train) + len(dls.valid))
    callback_time, callback_cpu = sum(spent[ON].values()), sum(spent_cpu[ON].values())
    base = wall['none']
    floor = statistics.median((a - b) / b for a, b in zip(wall['none (A/A)'], base))
    cpu_floor = statistics.median((a - b) / b for a, b in zip(cpu['none (A/A)'], cpu['none']))
    print(f'\n## fine_tune({epochs}) of {arch} on digits: {rounds} interleaved rounds '
          f'(median step {1000 * statistics.median(base) / ((epochs + 1) * (len(dls.train) + len(dls.valid))):.1f} ms)')
    print(f"{'case':<22}{'min s':>8}{'median s':>10}{'paired wall':>14}{'paired CPU':>12}{'CPU ratio':>11}")
    for name in SHOWN:
        diff = statistics.median((a - b) / b for a, b in zip(wall[name], base))
        cpu_diff = statistics.median((a - b) / b for a, b in zip(cpu[name], cpu['none']))
        shown = pct(diff) if abs(diff) > abs(floor) or name == 'none' else 'below noise'
        cpu_shown = pct(cpu_diff) if abs(cpu_diff) > abs(cpu_floor) or name == 'none' else 'below noise'
        ratio = statistics.median(cpu[name]) / statistics.median(cpu['none'])
        print(f'{name:<22}{min(wall[name]):>8.3f}{statistics.median(wall[name]):>10.3f}{shown:>14}{cpu_shown:>12}'
              f'{ratio:>11.3f}')
    print(f'noise floor (A/A median paired difference): wall {pct(floor)}, CPU {pct(cpu_floor)}')
    batch_time = statistics.median(base) / steps * rounds
    batch_cpu = statistics.median(cpu['none']) / steps * rounds
    print(f'WatchCallback in the training thread: {1e6 * callback_time / steps:.1f} us wall per batch on average '
          f'= {100 * callback_time / steps / batch_time:.2f}% of the mean batch time; {1e6 * callback_cpu / steps:.1f}'
          f' us CPU = {100 * callback_cpu / steps / batch_cpu:.2f}% of the mean batch CPU time; by kind of work:')
    for (kind, share), share_cpu in zip(spent_by_kind(spent[ON]).items(), spent_by_kind(spent_cpu[ON]).values()):
        print(f'  {kind:<60}{1e6 * share / steps:>8.1f} us wall {1e6 * share_cpu / steps:>8.1f} us CPU per batch')
    writer_time = writer_cpu[ON]
    print(f'writer thread: {1e6 * writer_time / steps:.1f} us CPU per batch = '
          f'{100 * writer_time / steps / batch_cpu:.2f}% of the mean batch CPU time (rows, store writes, thumbnails)')
    bench_dynamics(wall, cpu, spent, spent_cpu, writer_cpu, steps, batch_cpu)


def bench_dynamics(wall: dict, cpu: dict, spent: dict, spent_cpu: dict, writer_cpu: dict, steps: int,
                   batch_cpu: float) -> None:
    """Recording every item's values each epoch (`dynamics`, on by default) against WatchCallback without them,
    paired round by round: the median of the rounds' wall and CPU ratios, the A/A pair's for the noise floor."""
    def ratio(times: dict, name: str) -> float:
        return statistics.median(a / b for a, b in zip(times[name], times[OFF]))

    floor, cpu_floor = ratio(wall, OFF_AA) - 1, ratio(cpu, OFF_AA) - 1
    print(f'\nper-item dynamics: WatchCallback() (dynamics on, the default) against {OFF}, median of the paired ratios')
    print(f"{'case':<40}{'wall ratio':>12}{'CPU ratio':>12}{'wall':>14}{'CPU':>14}")
    for name, label in ((OFF_AA, OFF_AA), (ON, 'WatchCallback() (dynamics)')):
        diff, cpu_diff = ratio(wall, name) - 1, ratio(cpu, name) - 1
        shown = pct(diff) if abs(diff) > abs(floor) else 'below noise'
        cpu_shown = pct(cpu_diff) if abs(cpu_diff) > abs(cpu_floor) else 'below noise'
        print(f'{label:<40}{1 + diff:>12.3f}{1 + cpu_diff:>12.3f}{shown:>14}{cpu_shown:>14}')
    print(f'noise floor (A/A median paired ratio - 1): wall {pct(floor)}, CPU {pct(cpu_floor)}')
    names = {ON: 'WatchCallback() (dynamics)', OFF: OFF}
    print(f"{'per batch, us (wall / CPU)':<60}" + ''.join(f'{names[name]:>32}' for name in (ON, OFF)))
    kinds = {name: (spent_by_event_kind(spent[name]), spent_by_event_kind(spent_cpu[name])) for name in (ON, OFF)}
    rows = [('training thread, all events', {name: (sum(spent[name].values()), sum(spent_cpu[name].values()))
                                             for name in (ON, OFF)})]
    rows += [(kind, {name: (kinds[name][0][kind], kinds[name][1][kind]) for name in (ON, OFF)})
             for kind in kinds[ON][0]]
    rows += [('writer thread', {name: (math.nan, writer_cpu[name]) for name in (ON, OFF)})]

    def us(seconds: float, width: int) -> str:
        return f'{"-":>{width}}' if math.isnan(seconds) else f'{1e6 * seconds / steps:>{width}.1f}'

    for label, values in rows:
        print(f'{label:<60}' + ''.join(us(values[name][0], 22) + us(values[name][1], 10) for name in (ON, OFF)))
    for name in (ON, OFF):
        print(f'{names[name]}: training thread + writer thread = '
              f'{100 * (sum(spent_cpu[name].values()) + writer_cpu[name]) / steps / batch_cpu:.2f}% of the mean '
              'batch CPU time (no callback)')


def bench_validation(dls, work: Path, rounds: int) -> None:
    "Added time per validation pass for confusion matrix + top losses, and ClassificationInterpretation's cost."
    watch = TimedWatchCallback(store=work / 'valid.db')
    learn = digits_learner(dls, cbs=watch)
    with learn.no_bar(), learn.no_logging(): learn.fine_tune(rounds - 1)  # `rounds` validation passes
    added = sum(watch.spent.get(event, 0.0) for event in ('before_validate', 'after_batch valid', 'after_validate'))
    added /= rounds
    plain, interpretation = [], []
    for _ in range(rounds):  # validate() records nothing: WatchCallback stays idle outside a training fit
        start = time.perf_counter()
        with learn.no_bar(), learn.no_logging(): learn.validate()
        plain.append(time.perf_counter() - start)
    for _ in range(max(3, rounds // 3)):
        start = time.perf_counter()
        with learn.no_bar(), learn.no_logging():
            interp = ClassificationInterpretation.from_learner(learn)
            interp.confusion_matrix(); interp.top_losses(16)
        interpretation.append(time.perf_counter() - start)
    plain_pass, interp_time = statistics.median(plain), statistics.median(interpretation)
    print(f'\n## Confusion matrix + top-16 losses, collected during {rounds} validation passes of fine_tune')
    print(f'plain validation pass (learn.validate): median {1000 * plain_pass:.1f} ms')
    print(f'WatchCallback validation work in the training thread: {1000 * added:.2f} ms per pass = '
          f'{100 * added / plain_pass:.1f}% of a plain pass; 0 extra forward passes (thumbnails are encoded '
          'in the writer thread)')
    print(f'ClassificationInterpretation.from_learner + confusion_matrix() + top_losses(16): median '
          f'{1000 * interp_time:.1f} ms = {interp_time / plain_pass:.1f}x a plain pass')


def main(rounds: int = 10, epochs: int = 2, archs: tuple = ('mlp', 'cnn', 'resnet18')) -> None:
    torch.set_num_threads(max(1, (os.cpu_count() or 2)))
    print(f'machine: {os.cpu_count()} cores, torch {torch.__version__}, device cpu')
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        path = digits_folder(work / 'digits')
        for arch in archs:
            dls = tensor_dls() if arch == 'mlp' else digits_dls(path, size=16 if arch == 'cnn' else 32)
            bench_overhead(dls, arch, rounds, epochs, work)
        bench_validation(digits_dls(path), work, rounds)


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--rounds', type=int, default=10)
    parser.add_argument('--epochs', type=int, default=2)
    parser.add_argument('--arch', action='append', choices=['mlp', 'cnn', 'resnet18'])
    args = parser.parse_args()
    main(args.rounds, args.epochs, tuple(args.arch or ('mlp', 'cnn', 'resnet18')))
