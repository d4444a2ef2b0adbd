"""Dagster resources: the registry the pipeline registers, validates and deploys into."""

from __future__ import annotations

from dagster import ConfigurableResource

from registry import Registry, RoostSettings


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
