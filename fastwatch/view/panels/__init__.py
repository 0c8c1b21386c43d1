"""The dashboard's panels, each a small class that renders from a feed: `header` (the run's name, state and
progress; its alerts; whether live updates work), `run_list` (which run is shown, and which overlay it),
`chart_grid` (a chart per series, from `CHARTS`), `epoch_panel` (an epoch's confusion matrix, most-confused pairs
and top losses) and `share` (the link to the view). Each has a `widget` and a `css` of its own; `Dashboard` lays
them out and tells them what the feeds read."""
