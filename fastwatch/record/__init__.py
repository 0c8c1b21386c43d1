"""Recording a training: `WatchCallback` (fastai events → rows), the validation pass's confusion matrix and top
losses, thumbnails, and the background writer that puts rows into the store. The only part that imports torch and
fastai."""
