"""Finding mislabelled images from the training dynamics WatchCallback records, and what recording them costs.

scikit-learn's digits as an image folder with 5% of its training images moved into a wrong class's folder
(`mislabel`), `fine_tune` of the small CNN with WatchCallback; then the precision at k (k = the images moved) of
two rankings of the training items: the suspects (`DataMap.suspects()`: lowest margin averaged over the epochs,
recent ones weighing most) and the last epoch's loss (`DataMap.by_last_loss()`: what fastai's ImageClassifierCleaner
shows), one line per seed of `mislabel` and training, and their mean. The validation folder is left clean: the
error rate is against true labels.

The cost: the same fit with `WatchCallback(dynamics=True)` (the default) against `WatchCallback(dynamics=False)`,
interleaved round by round with an A/A pair (dynamics=False twice) for the noise floor: wall and process CPU time
(which includes the writer thread), and the model's forward passes counted by a forward hook, the same in both.

    python benchmarks/bench_cleaning.py [--seeds 3] [--epochs 12] [--lr 0.3] [--rounds 6] [--cost-epochs 2]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from fastai.vision.all import set_seed

from fastwatch import WatchCallback, open_store
from fastwatch.demo.digits import digits_dls, digits_folder, digits_learner, mislabel
from fastwatch.store.dynamics import data_map


def pct(x: float) -> str: return f'{100 * x:+.2f}%'


class ForwardCount:
    "The forward passes of a model, counted by a forward hook (every pass, whoever makes it)."
    def __init__(self, model: torch.nn.Module):
        self.n = 0
        model.register_forward_hook(self.hook)

    def hook(self, *_): self.n += 1


def fit(path: Path, store: Path, epochs: int, lr: float, seed: int, dynamics: bool) -> dict:
    "fine_tune the small CNN on the digits in `path` with WatchCallback: times, forward passes, the learner."
    set_seed(seed)
    learn = digits_learner(digits_dls(path), cbs=WatchCallback(store=store, dynamics=dynamics))
    forwards = ForwardCount(learn.model)
    wall, cpu = time.perf_counter(), time.process_time()
    with learn.no_bar(), learn.no_logging(): learn.fine_tune(epochs, base_lr=lr)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    error = learn.recorder.values[-1][learn.recorder.metric_names.index('error_rate') - 1]
    return {'wall': wall, 'cpu': cpu, 'forwards': forwards.n, 'learn': learn, 'error': float(error)}


def precision_at_k(order: np.ndarray, names: list[str], moved: set[str]) -> float:
    "The share of the first k = len(moved) items of a ranking (dataset indices) that were moved."
    return sum(names[i] in moved for i in order[:len(moved)]) / len(moved)


def bench_finding(work: Path, seeds: int, epochs: int, lr: float, fraction: float) -> None:
    print(f'\n## Moved images found: fine_tune({epochs}, base_lr={lr}) of the small CNN on the digits, '
          f'{100 * fraction:g}% of the training images moved to a wrong class; precision at k = the images moved')
    print(f"{'seed':>4}{'k':>5}{'error_rate':>12}{'suspects':>16}{'last loss':>11}")
    found = []
    for seed in range(seeds):
        path = digits_folder(work / f'digits-{seed}')
        moved = set(mislabel(path, fraction, seed=seed))
        run = fit(path, work / 'finding.db', epochs, lr, seed, dynamics=True)
        store, run_id = open_store(work / 'finding.db'), run['learn'].watch.run_id
        items = next(r for r in store.rows('items', run_id) if r.split == 'train')
        dm = data_map('train', store.rows('item_epochs', run_id), items)
        names = [dm.name(i) for i in range(len(dm.aum))]
        row = (run['error'], *(precision_at_k(order, names, moved) for order in (dm.suspects(), dm.by_last_loss())))
        found.append(row)
        print(f'{seed:>4}{len(moved):>5}{row[0]:>12.4f}{row[1]:>16.3f}{row[2]:>11.3f}')
    if not found: return
    means = [statistics.mean(column) for column in zip(*found)]
    print(f"{'mean':>4}{'':>5}{means[0]:>12.4f}{means[1]:>16.3f}{means[2]:>11.3f}")


def bench_cost(work: Path, rounds: int, epochs: int, lr: float, fraction: float) -> None:
    path = work / 'digits-0'
    if not path.is_dir(): mislabel(digits_folder(path), fraction, seed=0)
    cases = {'dynamics=False': False, 'dynamics=False (A/A)': False, 'dynamics=True': True}
    runs = {name: [] for name in cases}
    fit(path, work / 'warm-up.db', 1, lr, 0, dynamics=True)  # warm-up
    for _ in range(rounds):
        for name, dynamics in cases.items():
            run = fit(path, work / f'cost-{dynamics}.db', epochs, lr, 0, dynamics)
            runs[name].append({key: run[key] for key in ('wall', 'cpu', 'forwards')})
    base = runs['dynamics=False']

    def paired(name: str, key: str) -> float:
        return statistics.median((a[key] - b[key]) / b[key] for a, b in zip(runs[name], base))

    floor, cpu_floor = paired('dynamics=False (A/A)', 'wall'), paired('dynamics=False (A/A)', 'cpu')
    print(f'\n## What recording the dynamics costs: fine_tune({epochs}, base_lr={lr}) of the small CNN, WatchCallback '
          f'with and without dynamics, {rounds} interleaved rounds')
    print(f"{'case':<22}{'min s':>8}{'median s':>10}{'paired wall':>14}{'CPU s':>8}{'paired CPU':>12}"
          f"{'forward passes':>16}")
    for name in cases:
        wall, cpu = [r['wall'] for r in runs[name]], [r['cpu'] for r in runs[name]]
        diff, cpu_diff = paired(name, 'wall'), paired(name, 'cpu')
        shown = pct(diff) if abs(diff) > abs(floor) or name == 'dynamics=False' else 'below noise'
        cpu_shown = pct(cpu_diff) if abs(cpu_diff) > abs(cpu_floor) or name == 'dynamics=False' else 'below noise'
        forwards = sorted({r['forwards'] for r in runs[name]})
        print(f'{name:<22}{min(wall):>8.3f}{statistics.median(wall):>10.3f}{shown:>14}{statistics.median(cpu):>8.3f}'
              f'{cpu_shown:>12}{",".join(map(str, forwards)):>16}')
    print(f'noise floor (A/A median paired difference): wall {pct(floor)}, CPU {pct(cpu_floor)}')
    same = {r['forwards'] for name in cases for r in runs[name]}
    print(f'forward passes per fit: {"the same in every case" if len(same) == 1 else "DIFFERENT: " + str(same)}')


def main(seeds: int = 3, epochs: int = 12, lr: float = 0.3, rounds: int = 6, fraction: float = 0.05,
         cost_epochs: int = 2) -> None:
    torch.set_num_threads(max(1, (os.cpu_count() or 2)))
    print(f'machine: {os.cpu_count()} cores, torch {torch.__version__}, device cpu')
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bench_finding(work, seeds, epochs, lr, fraction)
        bench_cost(work, rounds, cost_epochs, lr, fraction)


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--seeds', type=int, default=3, help='seeds of mislabel and training, one fit each')
    parser.add_argument('--epochs', type=int, default=12, help='epochs of fine_tune after its frozen one')
    parser.add_argument('--lr', type=float, default=0.3, help="fine_tune's base_lr")
    parser.add_argument('--rounds', type=int, default=6, help='interleaved rounds of the cost comparison')
    parser.add_argument('--cost-epochs', type=int, default=2, help='epochs of fine_tune in the cost comparison')
    parser.add_argument('--fraction', type=float, default=0.05, help='share of the training images moved')
    args = parser.parse_args()
    main(args.seeds, args.epochs, args.lr, args.rounds, args.fraction, args.cost_epochs)
