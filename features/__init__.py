"""Roost's Feast feature repository and what uses it.

- ``feature_store.yaml``, ``.feastignore``, :mod:`features.definitions`: the repository (entity,
  sources, feature views, the on-demand view, one FeatureService per model feature set);
- :mod:`features.store`: a FeatureStore for a Roost home (SQLite or Redis online store);
- :mod:`features.offline`: point-in-time training data from a FeatureService;
- :mod:`features.online`: the gateway's batched online lookups.

Importing this package does not import Feast (it takes seconds); the modules above do.
"""
