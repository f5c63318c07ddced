"""Where the embedded store answers differently from MongoDB: the probes of
``mysimbdp store check``, and what the embedded store answers today (pinned, so that a
release of it that fixes one is noticed and the README's list is corrected)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from mysimbdp.cli import main
from mysimbdp.store.probes import PROBES, run_probes
from mysimbdp.store.writes import insert_idempotent

_EMBEDDED_ONLY = pytest.mark.skipif(bool(os.environ.get("MYSIMBDP_TEST_MONGO_URI")),
                                    reason="pins a behaviour of the embedded store, not of MongoDB")

#: What the embedded store answers; the README's "The embedded store and MongoDB" lists each.
EMBEDDED = {
    "count_null": "1",                # MongoDB counts the missing field too: 2
    "find_null": "[1, 2]",            # find agrees with MongoDB (and so not with count_documents)
    "ne_null": "[2, 3, 4, 5]",        # MongoDB leaves out the document without x
    "type_int": "[3, 4, 5]",          # every number, whatever its BSON type
    "type_long": "[3, 4, 5]",
    "type_double": "[3, 4, 5]",
    "distinct_id": "refused: OperationFailure: JSON path error near '_id'",
    "nan": "refused: WriteError: Invalid JSON document",
    "infinity": "refused: WriteError: Invalid JSON document",
}


def test_every_probe_states_mongodbs_answer() -> None:
    assert [p.name for p in PROBES] == list(EMBEDDED)
    assert all(p.mongodb and p.question for p in PROBES)


@_EMBEDDED_ONLY
async def test_the_embedded_store_differs_where_the_readme_says(mongo: AsyncMongoClient[dict[str, Any]],
                                                                tenant_id: str) -> None:
    db = mongo[f"pins_{tenant_id}"]
    results = {r.name: r for r in await run_probes(db)}  # type: ignore[arg-type]
    assert {name: r.store for name, r in results.items()} == EMBEDDED
    assert [name for name, r in results.items() if r.same] == ["find_null"]
    assert await db.list_collection_names() == []  # every scratch collection dropped
    await mongo.drop_database(db.name)


def test_store_check_probes_the_given_store(mongo_uri: str, capsys: pytest.CaptureFixture[str],
                                            tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--config-dir", str(tmp_path), "store", "check", "--uri", mongo_uri, "--json"])
    assert exit_.value.code == 0
    answer = json.loads(capsys.readouterr().out)
    assert [p["probe"] for p in answer["probes"]] == [p.name for p in PROBES]
    assert all(p["same"] == (p["store"] == p["mongodb"]) for p in answer["probes"])


def test_store_check_says_when_the_store_is_away(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--config-dir", str(tmp_path), "store", "check", "--uri", "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=300"])
    assert exit_.value.code == 1 and "cannot reach the store" in capsys.readouterr().err



async def test_a_nan_from_an_app_is_stored_as_null(mongo: AsyncMongoClient[dict[str, Any]], tenant_id: str) -> None:
    """The platform's choice, the same on every store: NaN (what pandas gives for a missing
    number) is stored as null, at any depth; the other values of the document are kept."""
    col = mongo[f"pins_{tenant_id}"]["docs"]
    result = await insert_idempotent(col, [{"_id": "a", "v": 1.0},
                                           {"_id": "b", "v": math.nan, "deep": [{"w": -math.nan, "k": "x"}]}])
    assert result.written == 2 and result.failed == []
    assert await col.find_one({"_id": "b"}) == {"_id": "b", "v": None, "deep": [{"w": None, "k": "x"}]}
    await mongo.drop_database(f"pins_{tenant_id}")


@_EMBEDDED_ONLY
async def test_an_infinite_number_is_refused_by_the_embedded_store(mongo: AsyncMongoClient[dict[str, Any]],
                                                                   tenant_id: str) -> None:
    """Infinity is a number, not a missing value: kept as it is, which MongoDB stores and the
    embedded store refuses; the document is then in ``failed`` with the store's reason (a
    ``write`` reject with the raw record), the others written."""
    col = mongo[f"pins_{tenant_id}"]["docs"]
    result = await insert_idempotent(col, [{"_id": "a", "v": 1.0}, {"_id": "c", "v": -math.inf}])
    assert result.written == 1 and [i for i, _ in result.failed] == [1]
    assert "Invalid JSON document" in result.failed[0][1]
    await mongo.drop_database(f"pins_{tenant_id}")


def test_store_uri_prints_the_configured_or_the_embedded_stores(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MYSIMBDP_MONGO_URI", raising=False)
    monkeypatch.setenv("MYSIMBDP_VAR_DIR", str(tmp_path / "var"))
    with pytest.raises(SystemExit) as exit_:
        main(["--config-dir", str(tmp_path), "store", "uri"])
    assert exit_.value.code == 1 and "has not run here yet" in capsys.readouterr().err
    (tmp_path / "var" / "store").mkdir(parents=True)
    (tmp_path / "var" / "store" / "uri").write_text("mongodb://127.0.0.1:27027/\n")
    with pytest.raises(SystemExit) as exit_:
        main(["--config-dir", str(tmp_path), "store", "uri"])
    assert exit_.value.code == 0 and capsys.readouterr().out == "mongodb://127.0.0.1:27027/\n"
    monkeypatch.setenv("MYSIMBDP_MONGO_URI", "mongodb://ops:s3cret@db1,db2/?replicaSet=rs0")
    with pytest.raises(SystemExit) as exit_:
        main(["--config-dir", str(tmp_path), "store", "uri"])
    assert capsys.readouterr().out == "mongodb://***@db1,db2/?replicaSet=rs0\n"  # no password on a screen
    with pytest.raises(SystemExit) as exit_:
        main(["--config-dir", str(tmp_path), "store", "uri", "--show-password"])
    assert capsys.readouterr().out == "mongodb://ops:s3cret@db1,db2/?replicaSet=rs0\n"

