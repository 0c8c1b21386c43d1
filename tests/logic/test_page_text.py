"""What the dashboard's panels say, from typed rows: header, alerts, gallery, pairs, charts' data and the follow
policy's loop. No store, server or browser."""
from __future__ import annotations

import asyncio

import numpy as np

from fastwatch.store.confusion import cells_of
from fastwatch.store.records import FitInfo, RunInfo, RunRecord
from fastwatch.store.tables import AlertRow, BatchRow, EpochRow, TopLossRow
from fastwatch.view.charts import most_confused
from fastwatch.view.feed import fit_spans
from fastwatch.view.follow import follow
from fastwatch.view.panels.chart_grid import LOSS, charts_for
from fastwatch.view.panels.epoch_panel import gallery_html, pairs_html
from fastwatch.view.panels.header import alerts_html, header_html

INFO = RunInfo(planned_epochs=3, fits=[FitInfo(0, 1, frozen=True), FitInfo(1, 2)])
EPOCHS = [EpochRow('r', 0, 0, True, 9, 1.0, 0.9, {'error_rate': 0.3}, 2.0, 100.0)]


def run(state: str = 'live', **fields) -> RunRecord:
    return RunRecord('r', '<b>name</b>', 'running' if state == 'live' else state, 90.0, 100.0, 100.0, INFO,
                     state=state, **fields)


def test_the_header_of_a_live_run_says_its_epoch_phase_and_elapsed_time():
    last = BatchRow('r', 12, 1, 1, False, 0.5, 0.6, 1e-3, 0.9, 105.0, None)
    text = header_html(run(), EPOCHS, last, now=150.0)
    assert 'epoch 2 of 3' in text and 'phase unfrozen (fit 2 of 2)' in text and 'elapsed 01:00' in text
    assert '&lt;b&gt;name&lt;/b&gt;' in text and "fw-state fw-live'>live<" in text


def test_the_header_of_an_ended_run_says_how_it_ended():
    text = header_html(run('failed', error='RuntimeError: <boom>'), EPOCHS, None, now=500.0)
    assert 'epoch 1 of 3' in text and 'phase —' in text and 'elapsed 00:10' in text
    assert "fw-state fw-failed'>failed<" in text and 'RuntimeError: &lt;boom&gt;' in text
    followed = header_html(run('stale', published_age=75.0), EPOCHS, None)
    assert 'fw-stale' in followed and 'published data 01:15 old' in followed


def test_alerts_are_listed_newest_first_and_undelivered_ones_say_so():
    alerts = [AlertRow('r', 0, 0.0, 'threshold', 'Run r: first\nlink', True),
              AlertRow('r', 1, 1.0, 'finished', 'Run r: <second>\nlink', False)]
    text = alerts_html(alerts)
    assert text.index('&lt;second&gt;') < text.index('first') and text.count('(not delivered)') == 1
    assert 'link' not in text and alerts_html([]) == ''


def test_the_gallery_and_the_pairs_escape_names_and_show_nan():
    item = TopLossRow('r', 0, 0, 7, '<x>.png', '<a>', 'b', None, float('nan'), None, None, 'some text')
    text = gallery_html([item])
    assert '&lt;a&gt;' in text and 'loss nan' in text and 'p nan' in text and '<pre' in text
    assert 'No top losses' in gallery_html([]) and '&lt;c&gt;' in pairs_html([('<c>', 'd', 2)])


def test_most_confused():
    matrix = np.array([[5, 2, 0], [4, 5, 1], [0, 0, 9]])
    assert most_confused(cells_of(matrix), ['a', 'b', 'c']) == [('b', 'a', 4), ('a', 'b', 2), ('b', 'c', 1)]


def test_charts_follow_the_registry_a_chart_per_metric_in_order():
    assert [spec.key for spec in charts_for(['error_rate', 'accuracy'])] == [
        'loss', 'metric:error_rate', 'metric:accuracy', 'lr', 'duration', 'memory', 'cpu']
    series = {name: {'x': [0, 1], 'y': [1.0, 0.5]} for name in ('loss', 'smooth_loss', 'lr')}
    layers = LOSS.data(series, EPOCHS)
    assert layers['valid_loss'] == {'x': [9], 'y': [0.9]} and layers['loss'] == series['loss']
    assert charts_for(['error_rate'])[1].data(series, EPOCHS) == {'value': {'x': [0], 'y': [0.3]}}


def test_fit_spans_follow_the_fits():
    last = BatchRow('r', 25, 1, 1, False, 0.5, 0.6, 1e-3, 0.9, 105.0, None)
    assert fit_spans(EPOCHS, last) == [{'fit': 0, 'frozen': True, 'start': 0, 'end': 9},
                                       {'fit': 1, 'frozen': False, 'start': 10, 'end': 25}]
    assert fit_spans([], None) == []


def test_follow_stops_when_nothing_is_left_and_after_its_lifetime():
    reasons, calls = [], []
    asyncio.run(follow(lambda: calls.append(1) or len(calls) < 3, interval=0, on_stop=reasons.append))
    asyncio.run(follow(lambda: True, interval=0.01, lifetime=0.05, on_stop=reasons.append))
    asyncio.run(follow(lambda: 1 / 0, on_stop=reasons.append))
    assert len(calls) == 3 and reasons[:2] == ['ended', 'lifetime'] and reasons[2].startswith('error: ZeroDivision')


def test_follow_awaits_a_coroutine_step_and_asks_its_interval_each_time():
    asked, calls = [], []

    async def step() -> bool:
        calls.append(1)
        return len(calls) < 3
    asyncio.run(follow(step, interval=lambda: asked.append(1) or 0))
    assert len(calls) == 3 and len(asked) == 2


def test_an_svg_chart_draws_finite_points_and_escapes_its_names():
    from fastwatch.view.svg import Line, line_chart
    svg = line_chart('<loss>', [Line([0, 1, 2, 3], [1.0, None, float('nan'), 0.5], 'smoothed', '#000'),
                                Line([1], [0.7], 'valid', '#f00', dots=True)], 'step', [(0, 1.5, '#ccc')])
    [points] = [part.split("points='")[1].split("'")[0] for part in svg.split('<polyline')[1:]]
    assert len(points.split()) == 2 and svg.count('<circle') == 1 and svg.count('<rect') == 1
    assert '&lt;loss&gt;' in svg and '<loss>' not in svg and svg.startswith('<svg') and svg.endswith('</svg>')
    assert '<polyline' not in line_chart('empty', [Line([], [], 'x', '#000')], 'epoch')


def test_the_live_summary_writes_a_small_matrix_as_a_table_and_a_large_one_as_a_note():
    from fastwatch.store.store import ConfusionMatrix
    from fastwatch.view.panels.live_summary import TABLE_CLASSES, confusion_html
    matrix = np.array([[3, 1], [0, 4]])
    table = confusion_html(ConfusionMatrix(2, ['<a>', 'b'], 2, cells_of(matrix), matrix))
    assert table.count('<td') == 4 and '&lt;a&gt;' in table and 'epoch 2' in table
    many = TABLE_CLASSES + 1
    note = confusion_html(ConfusionMatrix(0, [str(i) for i in range(many)], many, cells_of(np.eye(many)), np.eye(many)))
    assert '<td' not in note and f'{many} classes' in note


def test_overlaid_runs_each_get_a_style_of_their_own_one_legend_entry_and_a_hover_that_names_them():
    from bokeh.models import HoverTool

    from fastwatch.view.charts import LossChart, run_style
    runs = [(f'run{i}', f'name {i}') for i in range(25)]
    chart = LossChart(runs)
    assert len({run_style(i) for i in range(len(runs))}) == 25 and run_style(0)[1] == 'solid'
    assert len({run_style(i)[0] for i in range(20)}) == 20  # 20 colours before a dash pattern repeats one
    items = chart.fig.legend[0].items
    assert [item.label.value for item in items] == [label for _, label in runs]
    assert all(len(item.renderers) == 4 for item in items)  # loss, smoothed, valid loss (line, markers) of a run
    names = {dict(tool.tooltips).get('run') for tool in chart.fig.tools if isinstance(tool, HoverTool)}
    assert {label for _, label in runs} <= names
    single = LossChart(runs[:1])
    assert [item.label.value for item in single.fig.legend[0].items] == ['loss', 'smoothed', 'valid loss']
