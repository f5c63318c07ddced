"""The tenant-app contract: the hooks a batch or stream ingest app implements.

A tenant app is a module (or object) registered under the entry-point group ``mysimbdp``;
the entry-point name is the app's name, referenced by tenant profiles. An app is a
*batch app* if it implements :func:`mysimbdp_batch_wrangle` or
:func:`mysimbdp_batch_wrangle_table`, a *stream app* if it implements
:func:`mysimbdp_stream_wrangle`. Apps never receive a database client: the platform writes.

The platform calls the hooks of one app only (the one the tenant's profile names) through a
pluggy plugin manager of that app's own (:class:`mysimbdp.apps.app.App`): the app's module,
the plugins it lists in ``mysimbdp_plugins``, and the platform's defaults
(:mod:`mysimbdp.apps.defaults`, ``trylast``). Every hook is ``firstresult``: implementations
are called in pluggy's order (``tryfirst`` ones first, ``trylast`` ones last, hookwrappers
around them) until one returns something other than None. A hook with exactly one plain
implementation and no monitoring (``pm.enable_tracing()``) is called directly, which is what
pluggy would do, without its cost per call; per-record hooks are resolved once per batch of
records, not per record.

:data:`hookimpl` is the marker apps use (re-exported as :data:`mysimbdp.hookimpl`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import pyarrow as pa

    from mysimbdp.apps.contract import BatchContext, MessageContext, Target

__all__ = ["hookspec", "hookimpl", "PROJECT"]

#: The pluggy project name: the markers' name and the entry-point group of tenant apps.
PROJECT = "mysimbdp"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# ---------------------------------------------------------------------------------------
# Batch apps (the clientbatchingestapp)
# ---------------------------------------------------------------------------------------

@hookspec(firstresult=True)
def mysimbdp_batch_target(tenant: str) -> Target | None:
    """Where the app's documents go and which indexes to create there.

    :param tenant: the tenant id the app runs for.
    :returns: a :class:`mysimbdp.Target`; the first non-None result wins. The platform's
        default (``trylast``) is ``Target()``: collection ``records``, no extra index.
    """


@hookspec(firstresult=True)
def mysimbdp_batch_wrangle(record: dict[str, Any], context: BatchContext) -> dict[str, Any] | None:
    """Turn one raw record into one document.

    :param record: the parsed record: a CSV row as ``{header: text}`` (empty fields are
        ``""``), or a JSON Lines object as decoded.
    :param context: the tenant, app and file being loaded.
    :returns: the document to store (a dict). The platform sets ``_id`` (deterministic,
        for exactly-once loading). The first non-None result wins; None from every
        implementation skips the record on purpose (counted as ``records_skipped``). Raise :class:`mysimbdp.Reject` (or any exception) to send this
        record to ``_rejects`` with the reason; the rest of the file still loads.
    """


@hookspec(firstresult=True)
def mysimbdp_batch_wrangle_table(table: pa.RecordBatch, context: BatchContext) -> pa.RecordBatch | pa.Table | None:
    """Optional columnar path: turn a batch of CSV rows into a batch of documents at once.

    Implement this instead of (or besides) :func:`mysimbdp_batch_wrangle` for speed: the
    platform reads CSV files with Arrow's streaming CSV reader in blocks of 128 KiB and hands
    the app record batches of about 512 KiB of column data (some 5,000 rows of flights data),
    with column types inferred from the file's first block (values ``""``, ``NA``, ``N/A``, ``NULL``, ``null``, ``NaN`` are nulls). A row whose value
    does not fit its column's type goes to ``_rejects`` (it still appears in ``table``, with
    nulls, and is not written).

    :param table: the batch of rows (``pyarrow.RecordBatch``).
    :param context: the tenant, app and file being loaded.
    :returns: a ``RecordBatch`` or ``Table`` with the same number of rows, one document per
        row (column names are field names). A row whose optional string column ``_reject``
        is non-null goes to ``_rejects`` with that reason. Raising fails the whole file
        (``app_failed``). The first non-None result wins (there is no default). JSON Lines
        files always use :func:`mysimbdp_batch_wrangle`.
    """


@hookspec(firstresult=True)
def mysimbdp_batch_columns(context: BatchContext) -> dict[str, pa.DataType] | None:
    """Optional: the column types the columnar path reads CSV files with.

    :param context: the tenant, app and file about to be loaded.
    :returns: ``{column name: pyarrow type}`` (e.g. ``{"year": pa.int64()}``); columns not
        listed keep the types inferred from the file's first block. A value that does not
        fit its declared type sends its row to ``_rejects`` instead of changing the type of
        the whole column. The first non-None result wins; the platform's default (``trylast``)
        is ``{}``.
    """


@hookspec(firstresult=True)
def mysimbdp_batch_check(document: dict[str, Any], context: BatchContext) -> str | None:
    """Optional per-record validity check, run on each wrangled document before writing.

    :param document: the document the app's wrangle hook returned.
    :param context: the tenant, app and file being loaded.
    :returns: None if the document is valid, else the reason; the record then goes to
        ``_rejects``. The first non-None result wins (no default: without it, every
        document is valid).
    """


# ---------------------------------------------------------------------------------------
# Stream apps (the clientstreamingestapp)
# ---------------------------------------------------------------------------------------

@hookspec(firstresult=True)
def mysimbdp_stream_target(tenant: str) -> Target | None:
    """Where the stream app's documents go and which indexes to create there.

    :param tenant: the tenant id the app runs for.
    :returns: a :class:`mysimbdp.Target`; same meaning as :func:`mysimbdp_batch_target`. The
        first non-None result wins; the platform's default (``trylast``) is ``Target()``.
    """


@hookspec(firstresult=True)
def mysimbdp_stream_wrangle(record: dict[str, Any], message: MessageContext) -> dict[str, Any] | None:
    """Turn one record received in a message into one document.

    :param record: one JSON object from the message body (a body holding a JSON array
        yields one call per element).
    :param message: the tenant, routing key, ``message_id``, ``timestamp`` and the record's
        index in the message.
    :returns: the document to store (its ``_id`` defaults to ``m:<message_id>``, or
        ``m:<message_id>:<index>`` for an array body: never equal to a batch record's id). The
        first non-None result wins; None from every implementation skips the record on purpose
        (no document, no reject); raise
        :class:`mysimbdp.Reject` to send the record to ``_rejects``. The message is
        acknowledged either way.
    """


@hookspec(firstresult=True)
def mysimbdp_stream_quality(document: dict[str, Any], message: MessageContext) -> float | None:
    """Optional data-quality score of a wrangled document, from 0.0 (useless) to 1.0.

    :param document: the document the app's wrangle hook returned.
    :param message: the message the record came in.
    :returns: the score, stored with the document as ``_quality``; below the tenant's
        ``stream.min_quality`` the record goes to ``_rejects`` instead. The first non-None
        result wins; None (no default) means no score.
    """
