"""Monitoring: alert rules over the prediction log, evaluated by a Dagster sensor and delivered
to webhooks (:mod:`monitoring.alerts`); data drift of the logged inputs against the training
reference with Evidently (:mod:`monitoring.drift`, :mod:`monitoring.logged_inputs`) and concept
drift from predictions joined to feedback (:mod:`monitoring.concept`)."""
