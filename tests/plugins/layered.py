"""Test app ``layered``: one app of several plugins, to show that pluggy's ordering and wrappers apply.

The module lists two more plugins in ``mysimbdp_plugins``: the module
:mod:`tests.plugins.layered_extra` (a ``tryfirst`` batch wrangle and a ``trylast`` stream
wrangle) and a :class:`Stamp` object (an old-style hookwrapper around the batch wrangle). The
module's own ``mysimbdp_batch_target`` is a new-style wrapper around the platform's default.

* batch record ``{"first": ...}``: answered by the tryfirst plugin (``by: tryfirst``);
  ``{"none": ...}``: skipped (every implementation returns None); else ``by: main``; every
  document the wrangle returns is stamped with the file's name by the hookwrapper;
* stream record ``{"pass": ...}``: main returns None, the trylast plugin answers
  (``by: trylast``); else ``by: main``;
* batch target: the default's collection with ``_wrapped`` appended (``records_wrapped``).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from mysimbdp import BatchContext, MessageContext, Target, hookimpl


class Stamp:
    """An old-style hookwrapper: sees the result of every other implementation, then amends it."""

    @hookimpl(hookwrapper=True)
    def mysimbdp_batch_wrangle(self, record: dict[str, Any], context: BatchContext) -> Generator[None, Any, None]:
        outcome = yield
        doc = outcome.get_result()
        if doc is not None:
            outcome.force_result({**doc, "stamped": context.file})


mysimbdp_plugins = ["tests.plugins.layered_extra", Stamp()]


@hookimpl
def mysimbdp_batch_wrangle(record: dict[str, Any], context: BatchContext) -> dict[str, Any] | None:
    if record.get("none"):
        return None
    return {**record, "by": "main"}


@hookimpl(wrapper=True)
def mysimbdp_batch_target(tenant: str) -> Generator[None, Target, Target]:
    target = yield
    return Target(f"{target.collection}_wrapped", target.indexes)


@hookimpl
def mysimbdp_stream_wrangle(record: dict[str, Any], message: MessageContext) -> dict[str, Any] | None:
    if record.get("pass"):
        return None
    return {**record, "by": "main"}
