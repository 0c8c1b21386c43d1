"""`fastwatch export`: runs as a snapshot file, as TensorBoard event files, or as the CSV fastai's `CSVLogger` writes;
and `fastwatch import`, which merges a snapshot into a store.

TensorBoard files are written with the `tensorboard` package's own event writer and protobufs (no torch, no
TensorFlow): `pip install fastwatch[export]`.
"""
from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..errors import RunNotFound, UsageError
from ..formats import format_duration
from ..store import Store, open_store
from ..store.confusion import binned, dense
from ..store.files import check_new, writing
from ..store.snapshot import copy_runs, write_snapshot

BATCH_SCALARS = ('loss', 'smooth_loss', 'lr', 'mom')
CELL = 28  # pixels per confusion-matrix cell
GRID_CLASSES = 30  # up to this many classes the image is a labelled grid of counts
HEATMAP_SIDE = 512  # above, a heatmap at most this many pixels wide


def epochs_table(store: Store, run_id: str) -> tuple[list[str], list[list]]:
    """The run's epochs as fastai's Recorder logs them: columns `epoch, train_loss, valid_loss, <metrics>, time`.
    Epochs count on across the fits of one run, so both phases of `fine_tune` are there."""
    rows = store.epochs(run_id)
    metrics = list(dict.fromkeys(name for row in rows for name in row.metrics))
    table = [[row.epoch, row.train_loss, row.valid_loss, *[row.metrics.get(m) for m in metrics],
              format_duration(row.duration)] for row in rows]
    return ['epoch', 'train_loss', 'valid_loss', *metrics, 'time'], table


def write_csv(store: Store, run_ids: Sequence[str], path: str | os.PathLike, force: bool = False) -> None:
    "Write one run's epochs table to a CSV file, with the columns of fastai's `CSVLogger`."
    if len(run_ids) != 1: raise UsageError(f'csv export takes one run, not {len(run_ids)}')
    columns, table = epochs_table(store, run_ids[0])
    with writing(path, force) as tmp, open(tmp, 'w', newline='') as f:
        writer = csv.writer(f, lineterminator='\n')
        writer.writerow(columns)
        writer.writerows(table)


def confusion_png(cells: np.ndarray, vocab: Sequence[str]) -> tuple[bytes, int, int]:
    """A confusion matrix from its (actual, predicted, count) cells as a PNG (rows actual, columns predicted, shaded
    by row share): bytes, width, height. Up to GRID_CLASSES classes a labelled grid with counts; above, a heatmap of
    at most HEATMAP_SIDE² pixels, each binning several classes when there are more."""
    n = len(vocab)
    if n > GRID_CLASSES:
        matrix, _ = binned(cells, n, HEATMAP_SIDE)
        shade = (255 - 200 * _row_share(matrix)).astype(np.uint8)
        pixels = np.stack([shade, shade, np.full_like(shade, 255)], axis=-1)
        scale = max(1, HEATMAP_SIDE // len(matrix))
        image = Image.fromarray(pixels.repeat(scale, axis=0).repeat(scale, axis=1))
    else:
        image = _grid_png(dense(cells, n), [str(v) for v in vocab])
    out = io.BytesIO()
    image.save(out, format='PNG')
    return out.getvalue(), image.width, image.height


def _row_share(matrix: np.ndarray) -> np.ndarray:
    return matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)


def _grid_png(matrix: np.ndarray, labels: list[str]) -> Image.Image:
    "Labelled cells with their counts."
    n, font = len(labels), ImageFont.load_default()
    margin = 8 + max(int(font.getlength(label)) for label in labels)
    size = margin + n * CELL + 4
    image = Image.new('RGB', (size, size), 'white')
    draw = ImageDraw.Draw(image)
    share = _row_share(matrix)
    for i, label in enumerate(labels):
        middle = margin + i * CELL + CELL // 2
        draw.text((margin - 4, middle), label, fill='black', font=font, anchor='rm')
        draw.text((middle, margin - 4), label, fill='black', font=font, anchor='mb')
        for j in range(n):
            shade = int(255 - 200 * share[i, j])
            x, y = margin + j * CELL, margin + i * CELL
            draw.rectangle((x, y, x + CELL - 1, y + CELL - 1), fill=(shade, shade, 255), outline=(220, 220, 220))
            draw.text((x + CELL // 2, y + CELL // 2), str(matrix[i, j]), font=font, anchor='mm',
                      fill='white' if shade < 140 else 'black')
    return image


def _write_events(store: Store, run_id: str, logdir: Path) -> None:
    "One event file: batch scalars by global step; epoch scalars and the confusion matrix image by epoch."
    try:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
    except ImportError:
        raise UsageError('--format tensorboard needs the tensorboard package: pip install "fastwatch[export]"') \
            from None

    def scalars(prefix: str, values: dict) -> Summary:
        return Summary(value=[Summary.Value(tag=f'{prefix}/{name}', simple_value=value)
                              for name, value in values.items() if isinstance(value, (int, float))])

    writer = EventFileWriter(str(logdir))
    try:
        batches = store.batches(run_id)
        for i, step in enumerate(batches['step']):
            summary = scalars('batch', {name: batches[name][i] for name in BATCH_SCALARS})
            writer.add_event(Event(wall_time=batches['time'][i], step=step, summary=summary))
        for row in store.epochs(run_id):
            summary = scalars('epoch', {'train_loss': row.train_loss, 'valid_loss': row.valid_loss, **row.metrics})
            cm = store.confusion(run_id, row.epoch)
            if cm is not None:
                png, width, height = confusion_png(cm.cells, cm.vocab)
                image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=png)
                summary.value.add(tag='confusion_matrix', image=image)
            writer.add_event(Event(wall_time=row.time, step=row.epoch, summary=summary))
    finally:
        writer.close()


def write_tensorboard(store: Store, run_ids: Sequence[str], logdir: str | os.PathLike, force: bool = False) -> None:
    "Write TensorBoard event files into `logdir/<run id>/`, one directory per run (TensorBoard's runs)."
    targets = [Path(logdir) / run_id for run_id in run_ids]
    for target in targets: check_new(target, force, directory=True)  # before writing any of them
    for run_id, target in zip(run_ids, targets):
        with writing(target, force, directory=True) as tmp: _write_events(store, run_id, tmp)


WRITERS = {'snapshot': write_snapshot, 'tensorboard': write_tensorboard, 'csv': write_csv}


def export(*runs: str,  # Run ids (see `fastwatch ls`; default: every run in the store)
           Output: str = None,  # The snapshot file, TensorBoard log directory or CSV file to write
           format: str = 'snapshot',  # snapshot (a fastwatch store in one SQLite file), tensorboard or csv
           store: str = None,  # Store path or URL (default: $FASTWATCH_STORE, then ./fastwatch.db)
           force: bool = False,  # Replace an existing output
           ) -> None:
    "Export runs: a snapshot file to share or import, TensorBoard event files, or fastai's CSV epochs table."
    if format not in WRITERS: raise UsageError(f"unknown format {format!r}: use {', '.join(WRITERS)}")
    source = open_store(store, readonly=True)
    try:
        # `RUN --format csv FILE`: a last positional that names no run of the store is the output.
        if Output is None and format != 'snapshot' and len(runs) > 1 and not _is_run(source, runs[-1]):
            *runs, Output = runs
        if Output is None: raise UsageError('give the output with -o')
        runs = tuple(dict.fromkeys(runs)) or tuple(run.id for run in source.runs())
        if not runs: raise UsageError(f'{source.location} has no runs to export')
        for run_id in runs: source.run(run_id)
        WRITERS[format](source, runs, Output, force)
    finally: source.close()
    print(f"exported {', '.join(runs)} to {Output}")


def _is_run(store: Store, run_id: str) -> bool:
    try: store.run(run_id)
    except RunNotFound: return False
    return True


def import_snapshot(path: str,  # The snapshot file to merge
                    store: str = None,  # Store path or URL to merge into (default: $FASTWATCH_STORE, then fastwatch.db)
                    ) -> None:
    """Merge a snapshot's runs into a store. Of a run the store already has, only the rows it lacks are added (a
    fuller snapshot completes a partial one), so importing twice adds nothing."""
    source = open_store(path, readonly=True)
    try:
        run_ids = [run.id for run in source.runs()]
        dest = open_store(store)
        try:
            known = {run.id for run in dest.runs()}
            changed = copy_runs(source, dest, run_ids)
        finally: dest.close()
    finally: source.close()
    new = [run_id for run_id in run_ids if run_id not in known]
    completed = {run_id: rows for run_id, rows in changed.items() if run_id in known}
    parts = [f'imported {len(new)} run(s) into {dest.location}' + (f": {', '.join(new)}" if new else '')]
    if completed:
        parts.append(f"completed {len(completed)} run(s) with the rows they lacked: "
                     + ', '.join(f'{run_id} (+{rows})' for run_id, rows in completed.items()))
    if len(run_ids) - len(new) - len(completed):
        parts.append(f'{len(run_ids) - len(new) - len(completed)} already there')
    print('; '.join(parts))
