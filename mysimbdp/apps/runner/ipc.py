"""Arrow record batches as bytes (Arrow IPC stream format), for the columnar batch path.

A batch read here came from the other side of the wire: :func:`read_batch` validates it in
full before anyone uses it, so a malformed buffer from a hostile worker is an error, not a
crash.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.ipc

__all__ = ["write_batch", "read_batch", "IpcError"]


class IpcError(Exception):
    """The bytes are not one valid Arrow record batch."""


def write_batch(batch: pa.RecordBatch) -> bytes:
    """One record batch (with its schema) as Arrow IPC stream bytes."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def read_batch(data: bytes) -> pa.RecordBatch:
    """The one record batch in ``data``, validated in full; :class:`IpcError` if it is not one."""
    try:
        with pa.ipc.open_stream(pa.py_buffer(data)) as reader:
            batches = list(reader)
            schema = reader.schema
        if not batches:
            return pa.RecordBatch.from_pylist([], schema=schema)
        batch = batches[0] if len(batches) == 1 else pa.Table.from_batches(batches).combine_chunks().to_batches()[0]
        batch.validate(full=True)
    except (pa.ArrowException, OSError, ValueError, TypeError, IndexError) as exc:
        raise IpcError(f"not a valid Arrow record batch: {exc}"[:500]) from None
    return batch
