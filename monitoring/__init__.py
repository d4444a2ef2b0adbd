"""Monitoring: alert rules over the prediction log, evaluated by a Dagster sensor and delivered
to webhooks (:mod:`monitoring.alerts`)."""
