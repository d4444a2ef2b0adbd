"""Dagster resources: the registry the pipeline registers, validates and deploys into, and the
feature store its fraud model trains from and the gateway reads online features from."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dagster import ConfigurableResource

from features.store import FeatureSettings, build_store
from registry import Registry, RoostSettings

if TYPE_CHECKING:
    from feast import FeatureStore


class RegistryResource(ConfigurableResource):  # type: ignore[type-arg]
    """The Roost registry; defaults come from the ``ROOST_*`` environment (``ROOST_HOME``)."""

    home: str | None = None
    database_url: str | None = None

    def settings(self) -> RoostSettings:
        overrides: dict[str, object] = {}
        if self.home:
            overrides["home"] = self.home
        if self.database_url:
            overrides["database_url"] = self.database_url
        return RoostSettings(**overrides)  # type: ignore[arg-type]

    def get_registry(self) -> Registry:
        return Registry.from_settings(self.settings())


class FeatureStoreResource(ConfigurableResource):  # type: ignore[type-arg]
    """Roost's Feast store; defaults come from the ``ROOST_*`` environment (``ROOST_HOME``,
    ``ROOST_REDIS_URL``)."""

    home: str | None = None
    redis_url: str | None = None

    def settings(self) -> FeatureSettings:
        overrides: dict[str, object] = {}
        if self.home:
            overrides["home"] = self.home
        if self.redis_url:
            overrides["redis_url"] = self.redis_url
        return FeatureSettings(**overrides)  # type: ignore[arg-type]

    def get_store(self) -> FeatureStore:
        return build_store(self.settings())
