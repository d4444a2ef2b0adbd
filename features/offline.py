"""Point-in-time training data from a FeatureService: one output row per entity row.

:func:`historical_features` is Feast's ``get_historical_features`` over a FeatureService with
two guarantees the gateway's online lookup (:mod:`features.online`) also gives:

- **no row is lost.** Feast 0.67's file (Dask) offline store drops an entity row outright when
  its entity has feature rows but none inside ``[event time - TTL, event time]`` for some view
  (its TTL filter runs after the join; rows without any feature row survive). Such rows are
  joined again view by view, where the out-of-window view simply comes back empty, and the
  on-demand views are computed on the result, as Feast computes them;
- **missing features take their declared defaults** (a field's ``default`` tag), as online.

A feature value can only come from a feature row stamped at or before the entity row's event
timestamp (and within the view's TTL): nothing from after a label's time reaches its row.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from features.store import quiet_feast

if TYPE_CHECKING:
    from feast import FeatureService, FeatureStore

ROW_ID = "__roost_row"


def historical_features(
    store: FeatureStore, entity_df: pd.DataFrame, service_name: str
) -> pd.DataFrame:
    """``entity_df`` (join keys, ``event_timestamp``, request-time values, any other columns)
    joined point-in-time to the service's features, in ``entity_df``'s row order."""
    if ROW_ID in entity_df:
        raise ValueError(f"entity_df must not have a column named {ROW_ID!r}")
    service = store.get_feature_service(service_name)
    entities = entity_df.reset_index(drop=True)
    entities[ROW_ID] = np.arange(len(entities), dtype=np.int64)
    with quiet_feast():
        joined = store.get_historical_features(entity_df=entities, features=service).to_df()
        lost = entities[~entities[ROW_ID].isin(joined[ROW_ID])]
        if len(lost):
            joined = pd.concat([joined, _join_view_by_view(store, service, lost)])
    joined = joined.sort_values(ROW_ID, kind="stable").drop(columns=ROW_ID)
    return fill_defaults(store, joined.reset_index(drop=True))


def _join_view_by_view(
    store: FeatureStore, service: FeatureService, entities: pd.DataFrame
) -> pd.DataFrame:
    views = {v.name for v in store.list_feature_views()}
    odfvs = {v.name: v for v in store.list_on_demand_feature_views()}
    frame = entities.copy()
    projections = service.feature_view_projections
    for projection in (p for p in projections if p.name in views):
        names = [f.name for f in projection.features]
        part = store.get_historical_features(
            entity_df=entities, features=[f"{projection.name}:{n}" for n in names]
        ).to_df()
        frame = frame.merge(part[[ROW_ID, *names]], on=ROW_ID, how="left")
    for projection in (p for p in projections if p.name in odfvs):
        computed = odfvs[projection.name].transform_arrow(_arrow(frame)).to_pandas()
        for feature in projection.features:
            frame[feature.name] = computed[feature.name].to_numpy()
    return frame


def _arrow(frame: pd.DataFrame) -> Any:
    import pyarrow as pa

    return pa.Table.from_pandas(frame, preserve_index=False)


def fill_defaults(store: FeatureStore, frame: pd.DataFrame) -> pd.DataFrame:
    """Missing feature values replaced by their fields' ``default`` tags."""
    from features.definitions import DEFAULT_TAG

    for view in [*store.list_feature_views(), *store.list_on_demand_feature_views()]:
        for field in view.features:
            default = (field.tags or {}).get(DEFAULT_TAG)
            if default is not None and field.name in frame:
                frame[field.name] = frame[field.name].fillna(float(default))
    return frame
