"""Feast definitions: the training↔serving contract. Declarative only: no I/O here.

Order: Entity → Source → FeatureView → PushSource → FeatureService. Source paths are bare file names:
the apply step (`training.features.build_features`) places them under the settings' `features_dir`, so the
same definitions serve the laptop and the cluster and importing this module reads no settings.
"""

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, ValueType
from feast.types import Array, Float32, Int64, String

# A person who interacts with items; key of the profile and the recent-item sequence.
user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)
# A recommendable item (a movie).
item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.INT64)

# One row per user per distinct interaction time: the profile *after* that moment.
user_profile_source = FileSource(
    name="user_profile_source",
    path="user_profile.parquet",
    timestamp_field="event_timestamp",
)
# One row per user: everything they may not be recommended again (the state after their last interaction).
user_history_source = FileSource(
    name="user_history_source",
    path="user_history.parquet",
    timestamp_field="event_timestamp",
)
# Static item attributes and statistics from the training split (no test leakage).
item_features_source = FileSource(
    name="item_features_source",
    path="item_features.parquet",
    timestamp_field="event_timestamp",
)

# Real-time updates of the user profile (feedback loop); lands in online and offline stores.
user_profile_push = PushSource(name="user_profile_push", batch_source=user_profile_source)
user_history_push = PushSource(name="user_history_push", batch_source=user_history_source)
# Items upserted into the live catalogue (`recsys items upsert`, POST /items): online at once, offline at a rebuild.
item_features_push = PushSource(name="item_features_push", batch_source=item_features_source)

# The user's state: the sequence the retrieval model reads, plus activity and demographics.
user_profile = FeatureView(
    name="user_profile",
    entities=[user],
    ttl=timedelta(0),  # 0 = never expires: a quiet user still has a history
    schema=[
        Field(name="recent_items", dtype=Array(Int64)),  # most recent last, ≤ sequence_length ids
        Field(name="n_interactions", dtype=Int64),
        Field(name="mean_rating", dtype=Float32),
        Field(name="favourite_genres", dtype=Array(String)),  # top-3 genres so far
        Field(name="age", dtype=Int64),  # -1 when unknown
        Field(name="gender", dtype=String),  # "" when unknown
        Field(name="occupation", dtype=String),  # "" when unknown
    ],
    source=user_profile_push,
    online=True,
)

# The whole history's exclusion set, apart from the profile: the profile is snapshotted per interaction for
# point-in-time joins, and a full list per snapshot would grow with the square of a user's history. Online only
# in use (serving excludes these items); `seen_items` follows the operator's `repeat_event_types`.
user_history = FeatureView(
    name="user_history",
    entities=[user],
    ttl=timedelta(0),
    schema=[Field(name="seen_items", dtype=Array(Int64))],  # most recent last, ≤ max_seen_items ids
    source=user_history_push,
    online=True,
)

# Item attributes; the content embedding gives unseen (cold-start) items a vector.
item_features = FeatureView(
    name="item_features",
    entities=[item],
    ttl=timedelta(0),
    schema=[
        Field(name="title", dtype=String),
        Field(name="genres", dtype=Array(String)),
        Field(name="year", dtype=Int64),  # -1 when unknown
        Field(name="popularity", dtype=Int64),  # interactions in the training split
        Field(name="item_mean_rating", dtype=Float32),
        Field(name="content_embedding", dtype=Array(Float32)),  # 384-d MiniLM of title+genres+tags
    ],
    source=item_features_push,
    online=True,
)

# Contract of the retrieval model: the user's sequence.
retrieval_v1 = FeatureService(name="retrieval_v1", features=[user_profile[["recent_items", "n_interactions"]]])
# Contract of the ranking model: full user profile and item features.
ranking_v1 = FeatureService(name="ranking_v1", features=[user_profile, item_features])
# What the request path reads of a user: the model's inputs and what must not be recommended again.
serving_v1 = FeatureService(name="serving_v1", features=[user_profile, user_history])
