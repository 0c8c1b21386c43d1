"""The training process's CPU use and memory, every few seconds, as rows of the run's `system` table.

A writer listener (`writer.Listener`): it samples in the writer's thread, after a commit, never in the training
thread. On CUDA it reads torch's allocator (`torch.cuda.memory_allocated` / `memory_reserved`: host-side counters,
no device synchronisation) and, when `nvidia-ml-py` is installed, the GPU's utilisation.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import psutil
import torch

from ..store.records import ENDED
from ..store.tables import SystemRow, batches, system

MB = 2 ** 20


def _gpu_utilisation(device: torch.device) -> Callable[[], float | None]:
    "A reader of the GPU's utilisation (%), from NVML when `nvidia-ml-py` is installed; else one that gives None."
    try:
        import pynvml
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
    except Exception:  # not installed, no NVIDIA driver: the memory figures are torch's own anyway
        return lambda: None
    return lambda: float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)


class SystemSampler:
    "Samples the process every `every` s while run `run_id` records, adding `SystemRow`s through `add_rows`."

    def __init__(self, run_id: str, add_rows: Callable[[str, list], None], every: float = 10.0, device=None):
        self.run_id, self.add_rows, self.every = run_id, add_rows, every
        self.process = psutil.Process()
        self.process.cpu_percent(None)  # the first reading starts psutil's clock
        device = torch.device(device) if device is not None else None
        self.cuda = device if device is not None and device.type == 'cuda' else None
        self.gpu_percent = _gpu_utilisation(self.cuda) if self.cuda is not None else lambda: None
        self.seq, self.step, self.due, self.done = 0, None, time.monotonic(), False  # the first at the first commit

    def committed(self, rows: dict[str, list], updates: dict[str, dict]) -> None:
        written = [row.step for row in rows.get(batches.name, ()) if row.run_id == self.run_id]
        if written: self.step = written[-1]
        if updates.get(self.run_id, {}).get('status') in ENDED: self.done = True
        elif time.monotonic() >= self.due: self.sample()

    def sample(self) -> SystemRow:
        "Read the process (and the GPU) now, and hand the row to the writer."
        self.due = time.monotonic() + self.every
        cuda = (torch.cuda.memory_allocated(self.cuda) / MB, torch.cuda.memory_reserved(self.cuda) / MB) \
            if self.cuda is not None else (None, None)
        row = SystemRow(self.run_id, self.seq, time.time(), self.step, self.process.cpu_percent(None),
                        self.process.memory_info().rss / MB, *cuda, self.gpu_percent())
        self.seq += 1
        self.add_rows(system.name, [row])
        return row

    def finish(self, timeout: float) -> bool: return True
