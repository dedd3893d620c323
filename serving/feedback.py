"""Feedback stage: durable append → profile push to Feast → the user's next recommendation reads it.

Input: validated `FeedbackEvent`s. Output: what was stored, what was a duplicate, whether the online store
already has it. Order of effects: the event log commit (fsync) happens first and is the acknowledgement;
the push to Feast's online store follows in the same call, so the next `/recommend` sees the new sequence.
A push that fails leaves the profile dirty in the log; the replay loop pushes it later, so an outage of the
online store delays freshness but loses nothing. Pushes carry each profile version's update time from the log
(strictly rising per user) and run under the log's push lock, so replicas cannot land versions out of order.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from pathlib import Path

from ray import serve

from core.catalogue import CatalogueItem
from core.errors import DataFormatError, one_line
from core.events import DirtyProfile, FeedbackEvent, Profile, open_event_log
from core.settings import Settings, load_settings
from serving.catalogue import CatalogueWriter
from serving.feature_server import online_store
from serving.loopback import bind_loopback

PUSH_SOURCE = "user_profile_push"
HISTORY_PUSH_SOURCE = "user_history_push"
PROFILE_FIELDS = ("recent_items", "n_interactions", "mean_rating", "favourite_genres", "age", "gender", "occupation")
log = logging.getLogger("ray.serve")


class FeedbackWriter:
    """Synchronous core (the deployment runs it off the event loop; tests call it directly)."""

    def __init__(self, settings: Settings, store=None) -> None:
        self.log = open_event_log(settings)
        self.store = store or online_store(settings)
        self._genres: dict[int, list[str]] = {}  # item → genres (item rows change only when rebuilt)

    def genres(self, item_ids: list[int]) -> dict[int, list[str]]:
        """The items' genres from the online store (kept once read): what the taste counts are made of."""
        missing = sorted({int(i) for i in item_ids} - set(self._genres))
        if missing:
            rows = self.store.get_online_features(features=["item_features:genres"],
                                                  entity_rows=[{"item_id": i} for i in missing]).to_dict()
            self._genres.update({i: list(g or []) for i, g in zip(missing, rows["genres"], strict=True)})
        return {int(i): self._genres[int(i)] for i in item_ids}

    def base_profiles(self, user_ids: list[int]) -> dict[int, Profile]:
        """The online rows of users the log has not seen yet (their history before the first event)."""
        out = self.store.get_online_features(
            features=[f"user_profile:{f}" for f in PROFILE_FIELDS] + ["user_history:seen_items"],
            entity_rows=[{"user_id": u} for u in user_ids]).to_dict()
        profiles = {}
        for j, u in enumerate(user_ids):
            if out["recent_items"][j] is None:
                continue  # unknown user: starts empty
            seen = [int(i) for i in out["seen_items"][j]] if out["seen_items"][j] is not None else None
            counts: dict[str, float] = {}
            for gs in self.genres(seen or []).values():  # the whole history's genres: the taste counts
                for g in gs:
                    counts[g] = counts.get(g, 0.0) + 1.0
            profiles[u] = Profile(
                recent_items=[int(i) for i in out["recent_items"][j]],
                n_interactions=int(out["n_interactions"][j] or 0),
                mean_rating=float(out["mean_rating"][j] or 0.0),
                favourite_genres=list(out["favourite_genres"][j] or []),
                age=int(-1 if out["age"][j] is None else out["age"][j]),
                gender=out["gender"][j] or "", occupation=out["occupation"][j] or "",
                seen_items=seen, genre_counts=counts or None)
        return profiles

    def record(self, events: list[FeedbackEvent]) -> dict:
        """Append (durable), then push the changed profiles; the answer says whether the push happened."""
        try:
            genres = self.genres([e.item_id for e in events])
        except Exception as e:  # the online store down: log the events anyway; the taste catches up at a rebuild
            log.warning("feedback: item genres unreadable (%s); taste counts not advanced", one_line(e))
            genres = {}
        res = self.log.append(events, self.base_profiles, genres=genres)
        pushed, error = self.push(res.users)
        return {"accepted": res.accepted, "duplicates": res.duplicates, "pushed": pushed, "push_error": error}

    def push(self, user_ids: list[int] | None = None) -> tuple[bool, str | None]:
        """Push dirty profiles (of `user_ids`, or all) to the online store; failures stay dirty for replay.

        One push at a time per log, across threads, processes and (Redis) nodes: the log's push lock (a flock
        or a Redis lease, each taken per call, so two threads of one writer exclude each other too). Without it
        two requests for one user could read versions 5 and 6 and land them in the opposite order.
        """
        try:
            with self.log.push_lock():
                return self.write(self.log.dirty_profiles(user_ids))
        except Exception as e:  # the lock itself unreachable or busy: stays dirty, the replay loop retries
            return False, one_line(e, typed=True)

    def write(self, dirty: list[DirtyProfile]) -> tuple[bool, str | None]:
        """Push these profile versions, each stamped with its update time, and record them as pushed."""
        if not dirty:
            return True, None
        import pandas as pd
        from feast.data_source import PushMode

        rows = [{"user_id": d.user_id, "event_timestamp": datetime.fromtimestamp(d.updated, UTC),
                 **d.profile.__dict__} for d in dirty]
        df = pd.DataFrame(rows)[["user_id", "event_timestamp", *PROFILE_FIELDS]]
        df["n_interactions"] = df["n_interactions"].astype("int64")
        df["age"] = df["age"].astype("int64")
        df["mean_rating"] = df["mean_rating"].astype("float32")
        history = pd.DataFrame([{"user_id": r["user_id"], "event_timestamp": r["event_timestamp"],
                                 "seen_items": r["seen_items"] if r["seen_items"] is not None else r["recent_items"]}
                                for r in rows])
        try:  # the history first: a profile that is pushed but whose history is not stays dirty and is re-pushed
            self.store.push(HISTORY_PUSH_SOURCE, history, to=PushMode.ONLINE)
            self.store.push(PUSH_SOURCE, df, to=PushMode.ONLINE)
        except Exception as e:  # online store down: stays dirty, the replay loop retries
            return False, one_line(e, typed=True)
        self.log.mark_pushed([(d.user_id, d.version) for d in dirty])
        return True, None

    def delete_user(self, user_id: int, impressions_dir: Path | None) -> dict:
        """Erase a user: events and profile from the log (with a tombstone for later data loads), their online rows
        blanked (pushed now; if the store is down, by the replay loop, as any dirty profile), their impression
        lines redacted. The answer says what was deleted."""
        from serving.impressions import redact_user

        events = self.log.delete_user(user_id)
        pushed, error = self.push([user_id])
        redacted = redact_user(impressions_dir, user_id) if impressions_dir is not None else 0
        return {"user_id": user_id, "events_deleted": events, "online_rows": "blanked" if pushed else "pending",
                "push_error": error, "impressions_redacted": redacted, "tombstone": True}


def _refused_as_error(call) -> dict:
    """Run a catalogue write; a refused input (DataFormatError) becomes {"error": …} for the caller's 422."""
    try:
        return call()
    except DataFormatError as e:
        return {"error": str(e)}


@serve.deployment(name="Feedback", max_ongoing_requests=32)
class Feedback:
    """One writer per replica; replays unpushed profiles at start and every `feedback_replay_s`."""

    def __init__(self) -> None:
        bind_loopback()
        self.s = load_settings()
        self.writer = FeedbackWriter(self.s)
        self.writer.push()  # after a restart: converge the online store with the log before serving
        self._replay: asyncio.Task | None = None
        self.catalogue: CatalogueWriter | None = None  # the writes' replica also writes the catalogue (admin API)

    def _ensure_replay(self) -> None:
        if self._replay is None or self._replay.done():
            self._replay = asyncio.get_running_loop().create_task(self._replay_loop())

    async def _replay_loop(self) -> None:
        while True:
            await asyncio.sleep(self.s.feedback_replay_s)
            ok, error = await asyncio.to_thread(self.writer.push)
            if not ok:
                log.warning("feedback replay: online store push failed (%s); will retry", error)
            if self.catalogue is not None and await asyncio.to_thread(self.catalogue.release_idle,
                                                                      self.s.catalogue_encoder_idle_s):
                log.info("catalogue: item encoder unloaded after %g s unused", self.s.catalogue_encoder_idle_s)

    async def record(self, events: list[FeedbackEvent]) -> dict:
        self._ensure_replay()
        return await asyncio.to_thread(self.writer.record, events)

    async def delete_user(self, user_id: int) -> dict:
        self._ensure_replay()
        return await asyncio.to_thread(self.writer.delete_user, user_id, self.s.impressions_dir)

    def _catalogue(self) -> CatalogueWriter:
        if self.catalogue is None:
            self.catalogue = CatalogueWriter(self.s, self.writer.store, self.writer.log.push_lock)
        return self.catalogue

    async def upsert_items(self, items: list[CatalogueItem]) -> dict:
        """The admin API's catalogue upsert: embedding (the model loads at the first call), online rows, log. A
        refused input comes back as {"error": …} (the caller's 422), not as an exception (a lost stage)."""
        self._ensure_replay()  # its loop also unloads the encoder when idle
        return await asyncio.to_thread(_refused_as_error, lambda: self._catalogue().upsert(items))

    async def retire_items(self, item_ids: list[int]) -> dict:
        return await asyncio.to_thread(_refused_as_error, lambda: self._catalogue().retire(item_ids))

