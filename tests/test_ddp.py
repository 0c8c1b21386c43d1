"""Distributed training: `distrib_ctx` on 2 CPU processes (gloo) records one run, from rank 0, whose confusion matrix
and top losses cover the whole validation set, as a single-process ClassificationInterpretation finds them."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from browser import free_port
from PIL import Image

from fastwatch import open_store

pytest.importorskip('accelerate')  # fastai's distrib_ctx needs it

# fastai's DistributedDL._broadcast moves its tensor to CUDA (for nccl); gloo on CPU broadcasts a CPU tensor: a
# test-side stand-in, so that a machine without a GPU runs real DDP.
WORKER = """import sys, torch, torch.distributed as dist
from fastai.distributed import DistributedDL
from fastai.torch_core import rank_distrib

def _broadcast(self, t, rank):
    t = torch.LongTensor(t)
    dist.broadcast(t, rank)
    return t.tolist()
DistributedDL._broadcast = _broadcast

from fastwatch import WatchCallback
from fastwatch.demo.digits import digits_dls, digits_learner
digits, store, weights = sys.argv[1:4]
learn = digits_learner(digits_dls(digits), cbs=WatchCallback(store=store, name='ddp'))
with learn.no_bar(), learn.distrib_ctx(cpu=True, sync_bn=False): learn.fit(2, 1e-2)  # its line is counted
if rank_distrib() == 0: torch.save(learn.model.state_dict(), weights)
"""
REFERENCE = """import json, sys, torch
from fastai.interpret import ClassificationInterpretation
from fastwatch.demo.digits import digits_dls, digits_learner
digits, weights, out = sys.argv[1:4]
learn = digits_learner(digits_dls(digits))
learn.model.load_state_dict(torch.load(weights))
interp = ClassificationInterpretation.from_learner(learn)
losses, idxs = interp.top_losses(16)
valid = learn.dls.valid
json.dump({'matrix': interp.confusion_matrix().tolist(), 'losses': losses.tolist(), 'idxs': idxs.tolist(),
           'items': [str(valid.items[i].relative_to(learn.dls.path)) for i in idxs.tolist()],
           'pixels': [valid.do_item(i)[0].permute(1, 2, 0).tolist() for i in idxs.tolist()],
           'n_valid': len(valid.dataset), 'n_batches': len(learn.dls.train)}, open(out, 'w'))
"""


@pytest.fixture(scope='module')
def ddp_run(digits_path, tmp_path_factory):
    "A 2-rank fit(2) of the digits CNN under distrib_ctx, and ClassificationInterpretation on its final weights."
    folder = tmp_path_factory.mktemp('ddp')
    (folder / 'worker.py').write_text(WORKER)
    (folder / 'reference.py').write_text(REFERENCE)
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    done = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port',
                           str(free_port()), str(folder / 'worker.py'), str(digits_path), str(folder / 'store.db'),
                           str(folder / 'weights.pt')], env=env, cwd=folder, capture_output=True, text=True,
                          timeout=300)  # a collective that only one rank reaches hangs: fail instead
    assert done.returncode == 0, done.stderr[-3000:]
    subprocess.run([sys.executable, str(folder / 'reference.py'), str(digits_path), str(folder / 'weights.pt'),
                    str(folder / 'reference.json')], env=env, check=True, capture_output=True, timeout=300)
    return {'store': open_store(folder / 'store.db'), 'output': done.stdout + done.stderr,
            'reference': json.loads((folder / 'reference.json').read_text())}


def test_one_run_recorded_by_rank_0(ddp_run):
    store = ddp_run['store']
    [run] = store.runs()
    assert run.status == 'finished' and run.name == 'ddp'
    assert ddp_run['output'].count('fastwatch: recording run') == 1
    assert [e.epoch for e in store.epochs(run.id)] == [0, 1]
    # Each rank trains on half of each batch's items: rank 0 records its own steps.
    assert store.counts(run.id)['batches'] == 2 * -(-ddp_run['reference']['n_batches'] // 2)


def test_confusion_covers_the_whole_validation_set_without_padding(ddp_run):
    store, reference = ddp_run['store'], ddp_run['reference']
    run_id = store.runs()[0].id
    assert reference['n_valid'] % 2 == 1  # so DistributedDL pads one item onto rank 1
    confusion = store.confusion(run_id)
    assert confusion.matrix.sum() == reference['n_valid']
    np.testing.assert_array_equal(confusion.matrix, reference['matrix'])


def test_top_losses_are_the_whole_sets_mapped_back_to_its_items(ddp_run):
    store, reference = ddp_run['store'], ddp_run['reference']
    top = store.top_losses(store.runs()[0].id)
    assert [t.item_index for t in top] == reference['idxs']
    assert [t.item for t in top] == reference['items']
    np.testing.assert_allclose([t.loss for t in top], reference['losses'], rtol=1e-4)
    assert len({t.item_index for t in top}) == len(top)  # padding repeats items: none twice
    for t, pixels in zip(top, reference['pixels']):  # each thumbnail is its item's image, from whichever rank saw it
        pixels = np.array(pixels, dtype=np.uint8)
        thumbnail = Image.open(io.BytesIO(t.image)).convert('RGB').resize(pixels.shape[1::-1], Image.NEAREST)
        np.testing.assert_array_equal(np.asarray(thumbnail), pixels)
