"""The live catalogue in the offline data: items upserted since the last data load join the prepared items, so
the next feature rebuild gives them rows and the next retrain learns their ids.

Retired items stay in the prepared data: their interactions are still history worth learning from, and serving
keeps them out of every answer from the catalogue log itself (`core.catalogue.CatalogueState.retired`).
After a rebuild, the upserted items' online rows are pushed again with the rebuilt values (popularity, mean rating)
and the time now: Feast's Redis store keeps a row only if it is newer than the one it has, and materialization
writes item rows with a fixed old timestamp, so without it the upsert's row (popularity 0) would stay.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd

from core.catalogue import ITEM_PUSH_SOURCE, CatalogueState, read_state
from core.settings import Settings
from training.data.schema import ITEM_COLUMNS, ITEM_ID, MANIFEST, Dataset, load_dataset, save_dataset


def with_catalogue(ds: Dataset, state: CatalogueState) -> tuple[Dataset, int, int]:
    """The data set with the catalogue's upserts (new ids added, changed ones replaced); how many were added and
    how many replaced (0, 0 and the same object when nothing differs)."""
    if not state.items:
        return ds, 0, 0
    rows = pd.DataFrame([op.item.row() for op in state.items.values() if op.item is not None],
                        columns=list(ITEM_COLUMNS))
    current = ds.items.set_index(ITEM_ID)
    new = ~rows[ITEM_ID].isin(current.index)
    changed = [r for r in rows[~new].itertuples(index=False)
               if _differs(current.loc[r.item_id], r._asdict())]
    if not new.any() and not changed:
        return ds, 0, 0
    replace = {r.item_id for r in changed}
    items = pd.concat([ds.items[~ds.items[ITEM_ID].isin(replace)], rows[new | rows[ITEM_ID].isin(replace)]],
                      ignore_index=True).sort_values(ITEM_ID, kind="stable").reset_index(drop=True)
    items["year"] = items["year"].astype("Int64")
    return Dataset(ds.name, ds.interactions, items, ds.users), int(new.sum()), len(changed)


def _differs(old: pd.Series, new: dict) -> bool:
    year = None if pd.isna(old["year"]) else int(old["year"])
    new_year = None if new["year"] is None or pd.isna(new["year"]) else int(new["year"])
    return (old["title"] != new["title"] or year != new_year
            or list(old["genres"]) != list(new["genres"]) or list(old["tags"]) != list(new["tags"]))


def merge_catalogue(settings: Settings, state: CatalogueState | None = None) -> dict[str, int]:
    """Fold the catalogue log into the prepared items (rewritten only when something differs)."""
    state = read_state(settings) if state is None else state
    if not state.items or not (settings.data_dir / MANIFEST).exists():
        return {}
    ds, added, replaced = with_catalogue(load_dataset(settings.data_dir), state)
    if added or replaced:
        save_dataset(ds, settings.data_dir)
    return {"items_added": added, "items_replaced": replaced} if added or replaced else {}


def repush_catalogue_rows(settings: Settings, store, items: pd.DataFrame, state: CatalogueState | None = None) -> int:
    """Push the rebuilt rows of the catalogue's items to the online store, stamped now (see the module note)."""
    state = read_state(settings) if state is None else state
    rows = items[items["item_id"].isin(list(state.items))].copy()
    if rows.empty:
        return 0
    from feast.data_source import PushMode

    rows["event_timestamp"] = datetime.now(UTC)
    store.push(ITEM_PUSH_SOURCE, rows, to=PushMode.ONLINE)
    return len(rows)
