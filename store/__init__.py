"""The store: the one contract between extraction and training / evaluation."""

from store.schema import SCHEMA_VERSION, STREAMS, SchemaError, VideoRecord

__all__ = ["SCHEMA_VERSION", "STREAMS", "SchemaError", "VideoRecord"]
