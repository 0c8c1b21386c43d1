"""Each item's dynamics without a training: packing, the data map and its two rankings, the map kept one epoch at a
time, the chart that bins a large map, and what a run's decision rows add up to."""
from __future__ import annotations

import numpy as np
from helpers import assert_map_from_numpy

from fastwatch.store.decisions import current, decision_text
from fastwatch.store.dynamics import UNSEEN, DataMapBuilder, ItemValues, data_map
from fastwatch.store.tables import DecisionRow, ItemEpochRow, ItemsRow
from fastwatch.view.charts import MAP_POINTS, DataMapChart


def epoch_values(label_prob, label, predicted, loss=None) -> ItemValues:
    label_prob = np.asarray(label_prob, np.float32)
    label, predicted = np.asarray(label, np.int32), np.asarray(predicted, np.int32)
    seen = label != UNSEEN
    loss = -np.log(label_prob) if loss is None else np.asarray(loss, np.float32)
    margin = np.where(predicted == label, label_prob - (1 - label_prob), label_prob - (1 - label_prob) - 0.1)
    return ItemValues(np.where(seen, loss, np.nan).astype(np.float32), np.where(seen, label_prob, np.nan)
                      .astype(np.float32), np.where(seen, margin, np.nan).astype(np.float32), predicted, label)


def rows(*epochs: ItemValues, split: str = 'train') -> list[ItemEpochRow]:
    return [ItemEpochRow('r', e, split, len(v), v.pack()) for e, v in enumerate(epochs)]


def test_values_pack_and_unpack_exactly_with_unseen_items():
    values = epoch_values([0.9, 0.2, 0.5], [1, 0, UNSEEN], [1, 1, UNSEEN])
    back = ItemValues.unpack(3, values.pack())
    for name in ('loss', 'label_prob', 'margin', 'predicted', 'label'):
        np.testing.assert_array_equal(getattr(back, name), getattr(values, name))
    assert back.seen.tolist() == [True, True, False]


def test_the_data_map_averages_the_epochs_that_saw_each_item_and_ranks_suspects_by_mean_margin():
    # Item 0 is easy; item 1 is mislabeled (low confidence, steadily); item 2 is hard but learned; item 3 unseen.
    first = epoch_values([0.6, 0.1, 0.1, 0.5], [0, 1, 2, UNSEEN], [0, 0, 0, UNSEEN])
    second = epoch_values([0.9, 0.1, 0.3, 0.5], [0, 1, 2, UNSEEN], [0, 0, 0, UNSEEN], loss=[0.1, 1.0, 3.0, 0])
    third = epoch_values([0.95, 0.15, 0.9, 0.5], [0, 1, UNSEEN, UNSEEN], [0, 0, UNSEEN, UNSEEN])
    found = data_map('train', rows(first, second, third), ItemsRow('r', 'train', 0, None, ['a', 'b', 'c', 'd'], None))
    np.testing.assert_allclose(found.confidence[:3], [np.mean([0.6, 0.9, 0.95]), np.mean([0.1, 0.1, 0.15]), 0.2])
    np.testing.assert_allclose(found.variability[2], np.std([0.1, 0.3]), rtol=1e-6)
    np.testing.assert_allclose(found.correctness[:3], [1, 0, 0])
    assert np.isnan(found.confidence[3]) and found.epochs == [0, 1, 2]
    assert found.suspects().tolist() == [1, 2, 0]  # the unseen item is not ranked
    np.testing.assert_allclose(found.score[:3], [(first.margin[0] + second.margin[0]) / 4 + third.margin[0] / 2,
                                                 (first.margin[1] + second.margin[1]) / 4 + third.margin[1] / 2,
                                                 (first.margin[2] + second.margin[2]) / 2], rtol=1e-6)
    # Each item's latest loss, from the last epoch that saw it: item 2's is epoch 1's.
    assert found.by_last_loss().tolist() == [2, 1, 0]
    assert found.last.label_prob[2] == np.float32(0.3) and found.name(1) == 'b' and found.name(9) == '#9'
    assert data_map('valid', rows(first), None) is None


def random_epochs(*sizes: int, seed: int = 0) -> list[ItemValues]:
    "Epochs of `sizes` items of 3 classes, each item unseen in some (item 7 in all), predicted right about half."
    rng, history = np.random.default_rng(seed), []
    for n in sizes:
        seen = rng.random(n) > 0.2
        seen[7] = False
        label = rng.integers(0, 3, n)
        predicted = np.where(rng.random(n) < 0.5, label, rng.integers(0, 3, n))
        history.append(epoch_values(rng.uniform(0.01, 1, n), np.where(seen, label, UNSEEN),
                                    np.where(seen, predicted, UNSEEN)))
    return history


def test_the_map_kept_one_epoch_at_a_time_is_what_numpy_makes_of_every_epoch_so_far():
    """After each epoch folded in, the map is the whole-run formulas' of every epoch so far (`assert_map_from_numpy`),
    with items unseen in some epochs, one never seen, and 10 items more from the fourth epoch on (a dataset that grew
    between fits); a map built before an epoch was added stays as it was."""
    history, builder, maps = random_epochs(40, 40, 40, 50, 50), DataMapBuilder('train'), []
    for row in rows(*history):
        builder.add(row)
        maps.append(builder.build())
    for epoch, found in enumerate(maps):
        assert found.epochs == list(range(epoch + 1))
        assert_map_from_numpy(found, history[:epoch + 1])
    assert np.isnan(maps[-1].confidence[7]) and len(maps[2].confidence) == 40 and len(maps[-1].confidence) == 50
    assert not np.isnan(maps[-1].confidence[40:]).all()


def test_an_epoch_added_after_a_later_one_takes_its_place():
    history = random_epochs(40, 40, 50, 50)
    builder, whole = DataMapBuilder('train'), data_map('train', rows(*history))
    for row in reversed(rows(*history)): builder.add(row)
    found = builder.build()
    assert found.epochs == whole.epochs == [0, 1, 2, 3]
    for name in ('confidence', 'variability', 'correctness', 'aum', 'score'):
        np.testing.assert_array_equal(getattr(found, name), getattr(whole, name))
    assert_map_from_numpy(found, history)


def test_a_map_of_many_items_is_binned_into_one_image():
    def chart_of(n: int) -> DataMapChart:
        rng = np.random.default_rng(0)
        values = epoch_values(rng.uniform(0.01, 1, n), np.zeros(n), np.zeros(n))
        chart = DataMapChart(on_pick=lambda index: None)
        chart.show(data_map('train', rows(values, values)), ['0'] * n)
        return chart
    small, large = chart_of(MAP_POINTS), chart_of(MAP_POINTS + 1)
    assert len(small.points.data['x']) == MAP_POINTS and small.bins.data['image'] == []
    assert large.points.data['x'] == [] and large.bins.data['image'][0].sum() == MAP_POINTS + 1


def test_an_items_decision_is_its_latest_row_and_undo_takes_it_back():
    def row(seq, item, action, label=None):
        return DecisionRow('r', seq, float(seq), 'train', 0, item, action, label)
    decided = current([row(0, 'a', 'delete'), row(1, 'b', 'relabel', '7'), row(2, 'a', 'keep'), row(3, 'b', 'undo'),
                       row(4, 'c', 'relabel', '3')])
    assert {k: decision_text(v) for k, v in decided.items()} == {('train', 'a'): 'keep',
                                                                 ('train', 'c'): 'relabel as 3'}
