"""The one error hierarchy of Roost; each error carries the HTTP status it maps to.

RoostError (500)
├── InvalidRequest (400)      bad input: names the field and what was expected
├── Unauthorized (401)
├── NotFound (404)            unknown model, version or deployment
├── InvalidTransition (409)   a lifecycle transition the state machine forbids
├── Conflict (409)            the request contradicts the registry's state
├── ArtifactIntegrityError (409)  an artifact's bytes do not match its sha256
├── ServiceUnavailable (503)  not ready / overloaded
└── DeadlineExceeded (504)
"""

from __future__ import annotations


class RoostError(Exception):
    """Base class: ``status_code`` is the HTTP status the gateway answers with."""

    status_code: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(RoostError):
    status_code = 400


class Unauthorized(RoostError):
    status_code = 401


class NotFound(RoostError):
    status_code = 404


class InvalidTransition(RoostError):
    status_code = 409


class Conflict(RoostError):
    status_code = 409


class ArtifactIntegrityError(RoostError):
    status_code = 409


class ServiceUnavailable(RoostError):
    status_code = 503


class DeadlineExceeded(RoostError):
    status_code = 504
