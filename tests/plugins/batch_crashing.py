"""Test batch app that crashes on the file as a whole: its columnar hook calls ``sys.exit``."""

from __future__ import annotations

import sys
from typing import Any

from mysimbdp import hookimpl
from mysimbdp.apps import BatchContext


@hookimpl
def mysimbdp_batch_wrangle_table(table: Any, context: BatchContext) -> Any:
    sys.exit("crashing on purpose")
