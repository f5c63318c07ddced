"""The raw message kept in reject documents: text when UTF-8, base64 otherwise, bounded."""

from __future__ import annotations

import base64

from mysimbdp.stream.records import RAW_LIMIT, raw_fields


def test_a_utf8_body_is_kept_as_text() -> None:
    assert raw_fields('{"city":"Zürich"}'.encode()) == {"raw": '{"city":"Zürich"}', "raw_bytes": 18}


def test_a_body_over_the_limit_is_cut_without_splitting_a_character() -> None:
    body = b"a" * (RAW_LIMIT - 1) + "é".encode() + b"tail"  # the limit falls inside "é"
    fields = raw_fields(body)
    assert fields["raw"] == "a" * (RAW_LIMIT - 1) and fields["raw_bytes"] == len(body)
    assert "raw_encoding" not in fields


def test_a_body_that_is_not_utf8_is_kept_as_base64() -> None:
    body = b"\x00\xff\xfe{" * 10
    fields = raw_fields(body)
    assert fields["raw_encoding"] == "base64" and base64.b64decode(fields["raw"]) == body


def test_a_long_body_that_is_not_utf8_is_bounded() -> None:
    body = b"\xff" * (RAW_LIMIT + 100)
    fields = raw_fields(body)
    assert base64.b64decode(fields["raw"]) == body[:RAW_LIMIT] and fields["raw_bytes"] == RAW_LIMIT + 100
