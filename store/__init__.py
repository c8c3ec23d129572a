"""The store: the one contract between extraction and training / evaluation."""

if __name__ != "glimpse.store":  # the bare folder name would load a second copy of every module
    raise ImportError("store/ is the package glimpse.store: import it by that name (see ARCHITECTURE.md)")

from glimpse.store.reader import Store, StoreError, open_store
from glimpse.store.schema import SCHEMA_VERSION, STREAMS, SchemaError, VideoEntry, VideoRecord
from glimpse.store.writer import StoreExistsError, StoreWriter, create_store

__all__ = [
    "SCHEMA_VERSION",
    "STREAMS",
    "SchemaError",
    "Store",
    "StoreError",
    "StoreExistsError",
    "StoreWriter",
    "VideoEntry",
    "VideoRecord",
    "create_store",
    "open_store",
]
