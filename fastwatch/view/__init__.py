"""Viewing runs: the Voila dashboard (widgets, charts, live following), which store a page opens, the server that
serves it, and the terminal's `ls` and `show`. Reads the store only; never imports torch or fastai."""
