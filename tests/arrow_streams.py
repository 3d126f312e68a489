"""Arrow IPC streams as a data owner's tools write them: record batches, optionally compressed, in the current framing
unless the options say otherwise."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.ipc


def arrow_batches(batches: list[pa.RecordBatch], **options) -> bytes:
    """``options`` are ``pyarrow.ipc.IpcWriteOptions``'s (``compression``, ``use_legacy_format``)."""
    sink = io.BytesIO()
    with pyarrow.ipc.new_stream(sink, batches[0].schema, options=pyarrow.ipc.IpcWriteOptions(**options)) as writer:
        for batch in batches:
            writer.write_batch(batch)
    return sink.getvalue()
