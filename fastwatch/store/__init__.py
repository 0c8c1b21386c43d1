"""The store: where runs live (one SQLite file by default, or a PostgreSQL URL), its schema, and snapshots.

The one part every other imports; it imports no other part of fastwatch (only its errors), and no torch.
"""
from .location import display_location, hide_password, store_url
from .records import RunInfo, RunRecord
from .store import HEARTBEAT_SECONDS, Store, open_store
from .tables import RUN_TABLES

__all__ = ['Store', 'open_store', 'store_url', 'display_location', 'hide_password', 'HEARTBEAT_SECONDS',
           'RunRecord', 'RunInfo', 'RUN_TABLES']
