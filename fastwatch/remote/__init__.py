"""Runs elsewhere: the publish protocol (`protocol.py`: publishing a run to storage, following it from its https
URL) and https downloads with limits (`fetch.py`). Below `record`, `view` and `share`, above `store`."""
