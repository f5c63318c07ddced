"""Schema contracts: what a tenant's documents must look like, and what a violation does.

A contract is declared in the tenant's profile, for its files (``[batch.contract]``), for one
route of them (``contract = {...}`` in a ``[[batch.routes]]``: it replaces the batch one) and
for its stream (``[stream.contract]``)::

    [batch.contract]
    on_violation = "reject_record"        # reject_file | reject_record | drop_field | evolve
    required = ["carrier", "flight"]
    fields = { carrier = "string", flight = "int", dep_delay = "number", time_hour = "date" }

It is checked on the documents the app produced, before they are written (and by ``try``).
A document violates it when a ``required`` field is missing or null, when a declared field
holds a value of another type, or when it holds a field the contract does not declare. What
happens then (``on_violation``):

==================  =========================================================================
``reject_file``     the whole file is rejected (code ``contract``); for the stream, the whole
                    message is rejected (kind ``contract``)
``reject_record``   the document is not written: a reject of kind ``contract`` with the reasons
``drop_field``      undeclared fields and declared ones of the wrong type are dropped and the
                    document written; a required field missing or of the wrong type still
                    rejects the record
``evolve``          undeclared fields and new types of declared ones (required ones too) are
                    accepted and recorded in the tenant's schema history
                    (``GET /tenants/{id}/schema``); a required field missing or null still
                    rejects the record
==================  =========================================================================

Types are the BSON type names ``$type`` uses: ``string``, ``int``, ``long``, ``double``,
``bool``, ``date``, ``object``, ``array``, ``binData``, ``null``; ``number`` is any of
``int``, ``long``, ``double``; ``any`` accepts every value. Null is accepted in a field that is
not required. ``_id`` and fields whose name starts with ``_`` (``_quality``) are the
platform's and never violate a contract.

Plain data and pure functions: the check runs in the thread that prepares a file's batches
and in the stream's app thread, never on the event loop.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["Contract", "Policy", "TYPES", "Checked", "check_document", "type_name"]

Policy = Literal["reject_file", "reject_record", "drop_field", "evolve"]
TYPES = ("string", "int", "long", "double", "number", "bool", "date", "object", "array", "binData", "null", "any")
_NUMBERS = frozenset({"int", "long", "double"})
MAX_FIELDS = 500
MAX_NAME = 256


class Contract(BaseModel):
    """The contract of a profile section (see the module's documentation)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    on_violation: Policy = "reject_record"
    required: tuple[str, ...] = ()
    fields: dict[str, Literal["string", "int", "long", "double", "number", "bool", "date", "object", "array",
                              "binData", "null", "any"]] = Field(default_factory=dict, max_length=MAX_FIELDS)

    @model_validator(mode="after")
    def _required_are_declared(self) -> Contract:
        for name in (*self.required, *self.fields):
            if not name or len(name) > MAX_NAME:
                raise ValueError(f"a field name must be 1 to {MAX_NAME} characters")
        undeclared = [name for name in self.required if name not in self.fields]
        if undeclared:
            raise ValueError(f"required field {undeclared[0]!r} is not in fields; give its type "
                             f"(fields = {{ {undeclared[0]} = \"string\" }}, or \"any\")")
        return self


def type_name(value: Any) -> str:
    """The BSON type name of a value as the store would hold it (``$type``'s names)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int" if -(2**31) <= value < 2**31 else "long"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dt.datetime | dt.date):
        return "date"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, bytes | bytearray):
        return "binData"
    return type(value).__name__


def _fits(declared: str, actual: str) -> bool:
    return declared in ("any", actual) or (declared == "number" and actual in _NUMBERS) or \
        (declared == "long" and actual == "int")


@dataclass
class Checked:
    """What the contract says of one document."""

    document: dict[str, Any] | None  # what to write (None: not written)
    violations: list[str] = field(default_factory=list)
    evolved: dict[str, str] = field(default_factory=dict)  # field -> type accepted by ``evolve``
    reject_file: bool = False

    @property
    def reason(self) -> str:
        """The violations, for a person."""
        return "schema contract: " + "; ".join(self.violations)


def check_document(contract: Contract, doc: dict[str, Any]) -> Checked:
    """``doc`` against ``contract``; the document to write follows ``on_violation``."""
    violations: list[str] = []
    fatal = False  # a violation that rejects the record whatever the policy
    offending: list[str] = []  # fields whose value (or presence) violates
    evolved: dict[str, str] = {}
    for name in contract.required:
        if doc.get(name) is None:
            violations.append(f"required field {name!r} is missing" if name not in doc
                              else f"required field {name!r} is null")
            fatal = True
    for name, value in doc.items():
        if name.startswith("_"):
            continue
        actual = type_name(value)
        declared = contract.fields.get(name)
        if declared is None:
            violations.append(f"field {name[:MAX_NAME]!r} is not in the contract")
            offending.append(name)
            evolved[name[:MAX_NAME]] = actual
        elif value is not None and not _fits(declared, actual):
            violations.append(f"field {name!r} is {actual}, the contract says {declared}")
            offending.append(name)
            evolved[name] = actual
    if not violations:
        return Checked(doc)
    policy = contract.on_violation
    if policy == "reject_file":
        return Checked(None, violations, reject_file=True)
    if policy == "drop_field":  # dropping a required field would leave it missing
        fatal = fatal or any(name in contract.required for name in offending)
    if fatal or policy == "reject_record":
        return Checked(None, violations)
    if policy == "drop_field":
        return Checked({k: v for k, v in doc.items() if k not in offending}, violations)
    return Checked(doc, violations, evolved)  # evolve
