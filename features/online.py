"""Online feature lookups for the gateway: entity rows in, model input rows out.

:class:`OnlineFeatures` turns a batch of entity instances,
``{"entities": {"customer_id": 42}, "features": {"amount": 12.5, ...}}``, into model input rows
in the signature's feature order with **one** ``get_online_features`` call for the whole batch.
A feature comes from the version's FeatureService when the service provides it, else from the
instance's ``features`` (request-time values, which also feed the service's on-demand views).

Defined behaviour (every failure is a :class:`~registry.RoostError`, never a crash):

- **missing entity** (no row in the online store for a feature view) or **stale features**
  (the row is older than the view's TTL; Feast's online read returns such values as present, so
  this module checks the event timestamps itself) -> the view's features are missing: each takes
  its field's ``default`` tag. A missing feature without a default fails the request with
  :class:`~registry.NotFound` (404) naming the instance and the entity.
- **on-demand views** run here, on the values left after the TTL check (missing ones as None),
  as Feast runs them offline on the point-in-time join's nulls; so online and offline agree.
  Feast is asked for the service's feature-view features only.
- **bad instances** (unknown or missing entity keys or request-time values, wrong types) ->
  :class:`~registry.InvalidRequest` (400) naming the field.
- **store outage** (Redis down, SQLite file unreadable, registry without the service) ->
  :class:`~registry.errors.ServiceUnavailable` (503) naming the store.

One bad instance fails the whole batch, as an invalid inline instance does.

The lookup is synchronous; the gateway calls it off the event loop (``asyncio.to_thread``, in
the data plane's enrich step, :mod:`serving.pipeline`), only for requests that name entities. A
warm lookup takes about 0.25 ms for one row and 1.5-2 ms for 32 rows, on SQLite and on loopback
Redis alike (``benchmarks/features_latency.py``). The Redis client fails fast (0.5 s connect and
1 s read timeouts, no retries): a refused connection answers 503 at once, and an unreachable
host holds a worker thread, not the event loop, for up to the connect timeout.

Two request forms, one lookup: :meth:`OnlineFeatures.lookup` takes entity instances (KServe v1
``instances``), :meth:`OnlineFeatures.lookup_columns` takes columns named after the entity keys
and request-time values (OIP v2 entity inputs) and turns them into the same instances.
The FeatureStore is created on first use (importing Feast takes seconds); one
:class:`OnlineFeatures` per process and home comes from :func:`shared_online_features`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from features.definitions import DEFAULT_TAG
from features.store import FeatureSettings, build_store
from registry.errors import InvalidRequest, NotFound, RoostError, ServiceUnavailable

if TYPE_CHECKING:
    from feast import FeatureService, FeatureStore
    from feast.on_demand_feature_view import OnDemandFeatureView

__all__ = ["FeatureLookup", "OnlineFeatures", "shared_online_features"]

PLAN_TTL_S = 60.0
"""How long a FeatureService's resolved plan is reused (the store's registry cache is as long)."""


@dataclass(frozen=True)
class ViewPlan:
    """One feature view of a service: what it provides, how old it may be, its defaults."""

    name: str
    ttl_s: float | None  # None: no TTL (Feast's ttl of 0 means "lives forever")
    features: tuple[str, ...]
    defaults: dict[str, Any]


@dataclass(frozen=True)
class OnDemandPlan:
    """One on-demand view of a service: the features it reads and the ones it computes."""

    view: OnDemandFeatureView
    inputs: tuple[str, ...]  # source-view features it reads
    outputs: tuple[str, ...]
    defaults: dict[str, Any]


@dataclass(frozen=True)
class ServicePlan:
    """A FeatureService resolved against the registry."""

    service: FeatureService
    join_keys: dict[str, str]  # join key -> Feast value type name (INT64, STRING, ...)
    views: tuple[ViewPlan, ...]
    on_demand: tuple[OnDemandPlan, ...]
    request_fields: dict[str, str]  # request-source field -> Feast value type name
    built_at: float

    @cached_property
    def refs(self) -> list[str]:
        """The feature-view features to read, as Feast references (``view:feature``)."""
        return [f"{v.name}:{f}" for v in self.views for f in v.features]

    @cached_property
    def provided(self) -> frozenset[str]:
        """Every feature the service itself provides."""
        names = {f for v in self.views for f in v.features}
        return frozenset(names | {f for o in self.on_demand for f in o.outputs})


@dataclass(frozen=True)
class FeatureLookup:
    """The model input of a batch and what was used to build it (for the prediction log)."""

    feature_service: str
    feature_names: tuple[str, ...]
    rows: list[list[Any]]
    defaulted: list[list[str]] = field(default_factory=list)  # per row: features defaulted
    entities: list[dict[str, Any]] = field(default_factory=list)  # per row: the entity keys

    def to_log(self) -> dict[str, Any]:
        """A JSON-ready record of the entities and the features each row was scored with
        (the prediction log's ``inputs.features``)."""
        return {
            "feature_service": self.feature_service,
            "entities": self.entities,
            "features": [dict(zip(self.feature_names, row, strict=True)) for row in self.rows],
            "defaulted": self.defaulted,
        }


class OnlineFeatures:
    """Batched online lookups against one Roost feature store (SQLite or Redis)."""

    def __init__(
        self,
        settings: FeatureSettings,
        store: FeatureStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._store = store
        self._clock = clock
        self._plans: dict[str, ServicePlan] = {}
        self._lock = threading.Lock()

    @property
    def store(self) -> FeatureStore:
        """The Feast store, created on first use."""
        if self._store is None:
            with self._lock:
                if self._store is None:
                    try:
                        self._store = build_store(self.settings)
                    except Exception as exc:  # a broken yaml or home: the store is unavailable
                        raise self._unavailable("cannot open", exc) from exc
        return self._store

    # -- the lookup ---------------------------------------------------------------------------

    def lookup(
        self,
        service_name: str,
        feature_names: Sequence[str],
        instances: Sequence[Any],
        where: str = "instances",
    ) -> FeatureLookup:
        """Model input rows (in ``feature_names`` order) for entity ``instances``."""
        plan = self.plan(service_name)
        from_request = [n for n in feature_names if n not in plan.provided]
        wanted = set(plan.request_fields) | set(from_request)
        entity_rows: list[dict[str, Any]] = []
        request_rows: list[dict[str, Any]] = []
        for i, instance in enumerate(instances):
            entities, values = _parse_instance(f"{where}[{i}]", instance, plan, wanted)
            entity_rows.append(entities)
            request_rows.append(values)
        if not entity_rows:
            raise InvalidRequest(f"{where}: expected a non-empty list of entity instances")

        columns = self._read(plan, entity_rows)
        defaulted = self._complete(plan, columns, entity_rows, request_rows, where)
        rows = [
            [
                request_rows[r][name] if name in request_rows[r] else columns[name][r]
                for name in feature_names
            ]
            for r in range(len(entity_rows))
        ]
        return FeatureLookup(service_name, tuple(feature_names), rows, defaulted, entity_rows)

    def lookup_columns(
        self,
        service_name: str,
        feature_names: Sequence[str],
        columns: Mapping[str, Sequence[Any]],
        where: str = "rows",
    ) -> FeatureLookup:
        """As :meth:`lookup`, for columns (one value per row) named after the service's entity
        keys and request-time values: the form of OIP v2 entity inputs."""
        plan = self.plan(service_name)
        missing = [key for key in plan.join_keys if key not in columns]
        if missing:
            raise InvalidRequest(
                f"inputs: missing entity input '{missing[0]}'; feature service "
                f"'{service_name}' looks features up by " + ", ".join(plan.join_keys)
            )
        n = len(next(iter(columns.values()))) if columns else 0
        instances = [
            {
                "entities": {k: v[r] for k, v in columns.items() if k in plan.join_keys},
                "features": {k: v[r] for k, v in columns.items() if k not in plan.join_keys},
            }
            for r in range(n)
        ]
        return self.lookup(service_name, feature_names, instances, where)

    def _read(self, plan: ServicePlan, entity_rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
        store = self.store
        try:
            response = store.get_online_features(features=plan.refs, entity_rows=entity_rows)
        except Exception as exc:  # the store's own errors: redis, sqlite3, OSError, Feast's
            raise self._unavailable("lookup failed in", exc) from exc
        return _columns(response)

    def _complete(
        self,
        plan: ServicePlan,
        columns: dict[str, list[Any]],
        entity_rows: list[dict[str, Any]],
        request_rows: list[dict[str, Any]],
        where: str,
    ) -> list[list[str]]:
        """Null missing and stale view rows, run the on-demand views, fill defaults."""
        now = self._clock()
        n = len(entity_rows)
        gone: dict[str, list[tuple[int, str]]] = {}  # view -> [(row, why)]
        for view in plan.views:
            stamps = columns[f"{view.features[0]}__ts"]
            for r in range(n):
                why = _staleness(stamps[r], view.ttl_s, now)
                if why is not None:
                    gone.setdefault(view.name, []).append((r, why))
                    for name in view.features:
                        columns[name][r] = None
        for odfv in plan.on_demand:
            _transform(odfv, columns, request_rows)

        defaulted: list[list[str]] = [[] for _ in range(n)]
        reasons = {(v, r): why for v, lost in gone.items() for r, why in lost}
        for owner, names, defaults in [
            *((v.name, v.features, v.defaults) for v in plan.views),
            *((o.view.name, o.outputs, o.defaults) for o in plan.on_demand),
        ]:
            for name in names:
                column = columns[name]
                for r in range(n):
                    if column[r] is not None:
                        continue
                    if name not in defaults:
                        keys = ", ".join(f"{k}={entity_rows[r][k]!r}" for k in plan.join_keys)
                        why = reasons.get((owner, r), "null in the online store")
                        raise NotFound(
                            f"{where}[{r}]: no value of feature '{name}' for {keys} in "
                            f"'{owner}' ({why}) and the feature declares no default"
                        )
                    column[r] = defaults[name]
                    defaulted[r].append(name)
        return defaulted

    # -- resolving a FeatureService -----------------------------------------------------------

    def plan(self, service_name: str) -> ServicePlan:
        """The resolved FeatureService, reused for :data:`PLAN_TTL_S` seconds."""
        plan = self._plans.get(service_name)
        if plan is not None and time.monotonic() - plan.built_at < PLAN_TTL_S:
            return plan
        store = self.store
        try:
            service = store.get_feature_service(service_name, allow_cache=True)
            views = {v.name: v for v in store.list_feature_views(allow_cache=True)}
            odfvs = {v.name: v for v in store.list_on_demand_feature_views(allow_cache=True)}
        except Exception as exc:  # not applied yet, or the registry file is unreadable
            raise self._unavailable(f"feature service '{service_name}' is not available from",
                                    exc) from exc
        plan = _build_plan(service, views, odfvs)
        self._plans[service_name] = plan
        return plan

    def _unavailable(self, what: str, exc: BaseException) -> ServiceUnavailable:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return ServiceUnavailable(
            f"feature store: {what} the {self.settings.describe_online_store()} "
            f"(registry {self.settings.repo_path / 'registry.db'}): "
            f"{type(exc).__name__}{': ' + detail if detail else ''}"
        )


# -- helpers ----------------------------------------------------------------------------------


_SCALARS = frozenset(
    ["int64_val", "int32_val", "double_val", "float_val", "bool_val", "string_val"]
)


def _columns(response: Any) -> dict[str, list[Any]]:
    """The response's values and event timestamps (``<feature>__ts``, epoch seconds, 0 when the
    entity has no row), read straight from its proto: ``OnlineResponse.to_dict`` converts every
    value through Feast's generic type map, which costs more than the read itself for a batch."""
    from feast.type_map import feast_value_type_to_python_type

    columns: dict[str, list[Any]] = {}
    for name, vector in zip(
        response.proto.metadata.feature_names.val, response.proto.results, strict=True
    ):
        values: list[Any] = []
        for value in vector.values:
            kind = value.WhichOneof("val")
            if kind is None or kind == "null_val":
                values.append(None)
            elif kind in _SCALARS:
                values.append(getattr(value, kind))
            else:
                values.append(feast_value_type_to_python_type(value))
        columns[name] = values
        columns[f"{name}__ts"] = [ts.seconds for ts in vector.event_timestamps]
    return columns


def _value_type(dtype: Any) -> str:
    return str(dtype.to_value_type().name)


def _build_plan(
    service: FeatureService, views: Mapping[str, Any], odfvs: Mapping[str, Any]
) -> ServicePlan:
    view_plans: list[ViewPlan] = []
    odfv_plans: list[OnDemandPlan] = []
    join_keys: dict[str, str] = {}
    request_fields: dict[str, str] = {}
    for projection in service.feature_view_projections:
        names = [f.name for f in projection.features]
        if projection.name in views:
            fv = views[projection.name]
            fields = {f.name: f for f in fv.features}
            ttl = fv.ttl.total_seconds() if fv.ttl else 0.0
            view_plans.append(
                ViewPlan(projection.name, ttl or None, tuple(names), _defaults(fields, names))
            )
            for column in fv.entity_columns:
                join_keys[column.name] = _value_type(column.dtype)
        elif projection.name in odfvs:
            odfv = odfvs[projection.name]
            if odfv.mode != "python":
                raise ServiceUnavailable(
                    f"feature service '{service.name}': on-demand view '{odfv.name}' has mode "
                    f"'{odfv.mode}'; online lookups need mode='python'"
                )
            fields = {f.name: f for f in odfv.features}
            inputs = [f.name for p in odfv.source_feature_view_projections.values()
                      for f in p.features]
            for source in odfv.source_request_sources.values():
                for f in source.schema:
                    request_fields[f.name] = _value_type(f.dtype)
            odfv_plans.append(
                OnDemandPlan(
                    odfv,
                    tuple(inputs),
                    tuple(names),
                    _defaults(fields, names),
                )
            )
        else:
            raise ServiceUnavailable(
                f"feature service '{service.name}' names '{projection.name}', which is not in "
                "the feature registry"
            )
    read = {f for v in view_plans for f in v.features}
    for odfv_plan in odfv_plans:
        unread = [f for f in odfv_plan.inputs if f not in read]
        if unread:
            raise ServiceUnavailable(
                f"feature service '{service.name}': on-demand view '{odfv_plan.view.name}' reads "
                f"'{unread[0]}', which no feature view of the service provides; add its view"
            )
    return ServicePlan(
        service, join_keys, tuple(view_plans), tuple(odfv_plans), request_fields,
        time.monotonic(),
    )


def _defaults(fields: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in names:
        raw = (fields[name].tags or {}).get(DEFAULT_TAG) if name in fields else None
        if raw is None:
            continue
        kind = _value_type(fields[name].dtype)
        out[name] = int(raw) if kind in ("INT32", "INT64") else float(raw)
    return out


def _staleness(stamp: Any, ttl_s: float | None, now: float) -> str | None:
    """Why a view row is unusable (None: it is fresh)."""
    if not stamp:  # Feast's null timestamp: the entity has no row in this view
        return "not in the online store"
    if ttl_s is not None and now - float(stamp) > ttl_s:
        at = datetime.fromtimestamp(float(stamp), UTC).isoformat(timespec="seconds")
        return f"last updated {at}, older than the view's TTL of {_duration(ttl_s)}"
    return None


def _duration(seconds: float) -> str:
    if seconds % 86400 == 0:
        days = int(seconds // 86400)
        return f"{days} day{'s' if days != 1 else ''}"
    return f"{seconds:g} s"


def _transform(
    odfv: OnDemandPlan, columns: dict[str, list[Any]], request_rows: list[dict[str, Any]]
) -> None:
    """Run an on-demand view on the batch; its outputs become columns."""
    inputs: dict[str, list[Any]] = {name: columns[name] for name in odfv.inputs}
    for source in odfv.view.source_request_sources.values():
        for f in source.schema:
            inputs[f.name] = [row[f.name] for row in request_rows]
    try:
        output = odfv.view.transform_dict(inputs)
    except Exception as exc:  # the transformation's own bug, e.g. on a missing value
        raise RoostError(
            f"on-demand feature view '{odfv.view.name}' failed: {type(exc).__name__}: {exc}"
        ) from exc
    for name in odfv.outputs:
        columns[name] = list(output[name])


def _parse_instance(
    where: str, instance: Any, plan: ServicePlan, wanted: set[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    if not isinstance(instance, dict) or not isinstance(instance.get("entities"), dict):
        raise InvalidRequest(
            f'{where}: expected {{"entities": {{...}}, "features": {{...}}}} with entity keys '
            + ", ".join(plan.join_keys)
        )
    unknown = sorted(set(instance) - {"entities", "features"})
    if unknown:
        raise InvalidRequest(f"{where}: unknown key '{unknown[0]}'; expected entities, features")
    raw_entities: dict[str, Any] = instance["entities"]
    entities: dict[str, Any] = {}
    for key, kind in plan.join_keys.items():
        if key not in raw_entities:
            raise InvalidRequest(f"{where}.entities: missing entity key '{key}'")
        entities[key] = _coerce(f"{where}.entities.{key}", raw_entities[key], kind)
    extra = sorted(set(raw_entities) - set(plan.join_keys))
    if extra:
        raise InvalidRequest(
            f"{where}.entities: unknown entity key '{extra[0]}'; expected: "
            + ", ".join(plan.join_keys)
        )
    raw_values = instance.get("features", {})
    if not isinstance(raw_values, dict):
        raise InvalidRequest(f"{where}.features: expected an object of request-time values")
    extra = sorted(set(raw_values) - wanted)
    if extra:
        served = " (the feature store provides it)" if extra[0] in plan.provided else ""
        raise InvalidRequest(
            f"{where}.features: unexpected value '{extra[0]}'{served}; expected: "
            + ", ".join(sorted(wanted))
        )
    values: dict[str, Any] = {}
    for name in sorted(wanted):
        if name not in raw_values:
            raise InvalidRequest(f"{where}.features: missing request-time value '{name}'")
        kind = plan.request_fields.get(name, "DOUBLE")
        values[name] = _coerce(f"{where}.features.{name}", raw_values[name], kind)
    return entities, values


def _coerce(where: str, value: Any, kind: str) -> Any:
    if kind in ("INT32", "INT64"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidRequest(f"{where}: expected an integer, got {value!r}")
        return value
    if kind in ("FLOAT", "DOUBLE"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidRequest(f"{where}: expected a number, got {value!r}")
        return float(value)
    if kind == "STRING":
        if not isinstance(value, str):
            raise InvalidRequest(f"{where}: expected a string, got {value!r}")
        return value
    if kind == "BOOL":
        if not isinstance(value, bool):
            raise InvalidRequest(f"{where}: expected true or false, got {value!r}")
        return value
    return value


_shared: dict[Path, OnlineFeatures] = {}
_shared_lock = threading.Lock()


def shared_online_features(home: Path) -> OnlineFeatures:
    """This process's :class:`OnlineFeatures` for a Roost home; the online store (Redis when
    ``ROOST_REDIS_URL`` is set) is read from the environment the first time a home is used."""
    found = _shared.get(home)
    if found is None:
        with _shared_lock:
            found = _shared.get(home)
            if found is None:
                found = _shared[home] = OnlineFeatures(FeatureSettings(home=home))
    return found
