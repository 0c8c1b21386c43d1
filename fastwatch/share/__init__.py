"""Sharing runs: links to a view, Binder (`share`, `binder`), and exports to snapshots, TensorBoard and CSV (and
`import`). Reads the store only; never imports torch or fastai."""
