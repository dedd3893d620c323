"""Canonical tables every loader produces and every model consumes, plus their on-disk form.

Pinning dtypes here (instead of trusting each loader) means a model never has to guess whether
``year`` is a float with NaNs or whether ``timestamp`` is naive, and a prepared data set on disk can be
checked with one call.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from core.errors import DataFormatError, MissingStepError

USER_ID = "user_id"
ITEM_ID = "item_id"
RATING = "rating"
EVENT_TYPE = "event_type"
TIMESTAMP = "timestamp"
TITLE = "title"
YEAR = "year"
GENRES = "genres"
TAGS = "tags"
AGE = "age"
GENDER = "gender"
OCCUPATION = "occupation"

INTERACTION_COLUMNS = (USER_ID, ITEM_ID, RATING, EVENT_TYPE, TIMESTAMP)
ITEM_COLUMNS = (ITEM_ID, TITLE, YEAR, GENRES, TAGS)
USER_COLUMNS = (USER_ID, AGE, GENDER, OCCUPATION)

TIMESTAMP_DTYPE = "datetime64[ns, UTC]"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_FILES = {"interactions": "interactions.parquet", "items": "items.parquet", "users": "users.parquet"}
# Explicit parquet types, so all-null or all-empty columns are stored as string / list<string> rather than
# the `null` type pyarrow would infer, which other readers (Feast, Spark) handle badly.
_ARROW_SCHEMAS = {
    "interactions": pa.schema(
        [(USER_ID, pa.int64()), (ITEM_ID, pa.int64()), (RATING, pa.float32()), (EVENT_TYPE, pa.string()),
         (TIMESTAMP, pa.timestamp("ns", tz="UTC"))]
    ),
    "items": pa.schema(
        [(ITEM_ID, pa.int64()), (TITLE, pa.string()), (YEAR, pa.int64()), (GENRES, pa.list_(pa.string())),
         (TAGS, pa.list_(pa.string()))]
    ),
    "users": pa.schema(
        [(USER_ID, pa.int64()), (AGE, pa.int64()), (GENDER, pa.string()), (OCCUPATION, pa.string())]
    ),
}


@dataclass(frozen=True)
class Dataset:
    """One prepared data set: interactions plus item and user side tables."""

    name: str
    interactions: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame


def validate(ds: Dataset) -> None:
    """Raise DataFormatError unless all three tables have exactly the canonical columns and dtypes."""
    inter, items, users = ds.interactions, ds.items, ds.users
    _check_columns("interactions", inter, INTERACTION_COLUMNS)
    _check_columns("items", items, ITEM_COLUMNS)
    _check_columns("users", users, USER_COLUMNS)

    _check_dtype("interactions", inter, USER_ID, "int64")
    _check_dtype("interactions", inter, ITEM_ID, "int64")
    _check_dtype("interactions", inter, RATING, "float32")
    _check_dtype("interactions", inter, TIMESTAMP, TIMESTAMP_DTYPE)
    _check_strings("interactions", inter, EVENT_TYPE, nullable=False)
    if inter[RATING].isna().any():
        raise DataFormatError("interactions.rating has missing values")
    if inter[TIMESTAMP].isna().any():
        raise DataFormatError("interactions.timestamp has missing values")

    _check_dtype("items", items, ITEM_ID, "int64")
    _check_dtype("items", items, YEAR, "Int64")
    _check_strings("items", items, TITLE, nullable=False)
    _check_string_lists("items", items, GENRES)
    _check_string_lists("items", items, TAGS)

    _check_dtype("users", users, USER_ID, "int64")
    _check_dtype("users", users, AGE, "Int64")
    _check_strings("users", users, GENDER, nullable=True)
    _check_strings("users", users, OCCUPATION, nullable=True)

    for table, frame, key in (("items", items, ITEM_ID), ("users", users, USER_ID)):
        dup = frame[key][frame[key].duplicated()]
        if len(dup):
            raise DataFormatError(f"{table}.{key} is not unique: {int(dup.iloc[0])} appears more than once")
    for key, side, table in ((ITEM_ID, items, "items"), (USER_ID, users, "users")):
        unknown = inter[key][~inter[key].isin(side[key])]
        if len(unknown):
            raise DataFormatError(f"interactions reference {key} {int(unknown.iloc[0])} absent from {table}")


def _check_columns(table: str, frame: pd.DataFrame, expected: tuple[str, ...]) -> None:
    missing = [c for c in expected if c not in frame.columns]
    extra = [c for c in frame.columns if c not in expected]
    if missing or extra:
        raise DataFormatError(f"{table} table columns wrong: missing {missing}, unexpected {extra}")


def _check_dtype(table: str, frame: pd.DataFrame, column: str, dtype: str) -> None:
    if str(frame[column].dtype) != dtype:
        raise DataFormatError(f"{table}.{column} has dtype {frame[column].dtype}, expected {dtype}")


def _check_strings(table: str, frame: pd.DataFrame, column: str, *, nullable: bool) -> None:
    col = frame[column]
    kind = pd.api.types.infer_dtype(col, skipna=True)
    if kind not in ("string", "empty") or (not nullable and col.isna().any()):
        what = "strings or None" if nullable else "non-null strings"
        raise DataFormatError(f"{table}.{column} must hold {what} (found {kind})")


def _check_string_lists(table: str, frame: pd.DataFrame, column: str) -> None:
    for value in frame[column]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise DataFormatError(f"{table}.{column} must hold lists of strings, found {value!r}")


def interactions_digest(interactions: pd.DataFrame) -> str:
    """sha256 of the interaction content, independent of row order and of pandas/parquet versions.

    Hashes raw column bytes in a canonical row order, so the digest identifies *what* was trained on
    (and survives a save/load round trip) rather than how it happened to be stored.
    """
    codes, uniques = pd.factorize(interactions[EVENT_TYPE], sort=True)
    columns: dict[str, np.ndarray] = {
        USER_ID: interactions[USER_ID].to_numpy(np.int64),
        ITEM_ID: interactions[ITEM_ID].to_numpy(np.int64),
        TIMESTAMP: interactions[TIMESTAMP].to_numpy(dtype="datetime64[ns]").view(np.int64),
        RATING: interactions[RATING].to_numpy(np.float32),
        EVENT_TYPE: codes.astype(np.int64),
    }
    # np.lexsort sorts by the last key first.
    order = np.lexsort([columns[c] for c in reversed(INTERACTION_COLUMNS)])
    digest = hashlib.sha256()
    digest.update(json.dumps([str(u) for u in uniques]).encode())
    for name in INTERACTION_COLUMNS:
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(columns[name][order]).tobytes())
    return digest.hexdigest()


def save_dataset(ds: Dataset, directory: Path) -> dict[str, Any]:
    """Write the three tables as parquet plus manifest.json; returns the manifest.

    The manifest is written last, so its presence marks a complete data set.
    """
    validate(ds)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MANIFEST).unlink(missing_ok=True)
    tables = {
        "interactions": ds.interactions[list(INTERACTION_COLUMNS)],
        "items": ds.items[list(ITEM_COLUMNS)],
        "users": ds.users[list(USER_COLUMNS)],
    }
    for key, frame in tables.items():
        table = pa.Table.from_pandas(frame, schema=_ARROW_SCHEMAS[key], preserve_index=False)
        pq.write_table(table, directory / _FILES[key])
    manifest = {
        "format_version": FORMAT_VERSION,
        "name": ds.name,
        "counts": {key: len(frame) for key, frame in tables.items()},
        "interactions_sha256": interactions_digest(ds.interactions),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of a prepared data set; MissingStepError when there is none."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise MissingStepError(f"no prepared data set in {directory}: run `recsys data` first")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise DataFormatError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(manifest, dict) or "name" not in manifest:
        raise DataFormatError(f"{path} is not a data set manifest (no 'name')")
    return manifest


def load_dataset(directory: Path) -> Dataset:
    """Read a data set written by save_dataset, restoring the canonical dtypes."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    frames: dict[str, pd.DataFrame] = {}
    for key, filename in _FILES.items():
        path = directory / filename
        if not path.is_file():
            raise DataFormatError(f"prepared data set in {directory} is incomplete: {filename} is missing")
        frames[key] = pd.read_parquet(path)
    items = frames["items"]
    for column in (GENRES, TAGS):
        # Parquet hands list columns back as numpy arrays; the schema promises python lists.
        lists = [[str(v) for v in value] for value in items[column]]
        items[column] = pd.Series(lists, index=items.index, dtype=object)
    users = frames["users"]
    for column in (GENDER, OCCUPATION):
        # Missing values as None (not NaN) even where pandas reads strings into a string dtype.
        users[column] = users[column].astype(object).where(users[column].notna(), None)
    ds = Dataset(name=str(manifest["name"]), interactions=frames["interactions"], items=items, users=users)
    validate(ds)
    return ds
