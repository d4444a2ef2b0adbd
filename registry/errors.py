"""The one error hierarchy of Roost; each error knows how it goes on the wire.

RoostError (500 INTERNAL)
├── InvalidRequest (400 INVALID_ARGUMENT)   bad input: names the field and what was expected
│   ├── PayloadTooLarge (413 RESOURCE_EXHAUSTED)  a body over ``max_request_bytes``
│   └── UnsupportedMediaType (415 INVALID_ARGUMENT)  an unknown ``Content-Encoding``
├── Unauthorized (401 UNAUTHENTICATED)      no key, or one that is not valid (WWW-Authenticate)
├── Forbidden (403 PERMISSION_DENIED)       the key lacks the role, or the model is out of scope
├── NotFound (404 NOT_FOUND)                unknown model, version or deployment
├── InvalidTransition (409 FAILED_PRECONDITION)  a transition the state machine forbids
├── Conflict (409 FAILED_PRECONDITION)      the request contradicts the registry's state
├── ArtifactIntegrityError (409 FAILED_PRECONDITION)  an artifact's bytes do not match its sha256
├── RateLimited (429 RESOURCE_EXHAUSTED)    a key over its rate limit (Retry-After)
├── ServiceUnavailable (503 UNAVAILABLE)    not ready / overloaded
│   ├── Draining (503)                      the gateway is shutting down (Retry-After)
│   ├── serving.batching.QueueFull          the version's queue is full (Retry-After)
│   │   └── serving.batching.InstancesStuck every instance is set aside (Retry-After)
│   ├── serving.breaker.BreakerOpen         the version's circuit breaker is open (Retry-After)
│   └── warehouse.wal.LogUnavailable        the prediction log cannot make a record durable
└── DeadlineExceeded (504 DEADLINE_EXCEEDED)
    └── serving.batching.ExecutionTimeout   a batch ran past ``execution_timeout_ms``

``to_http()`` gives the status and the headers (``Retry-After`` when ``retry_after_s`` is set);
``to_grpc()`` the name of the ``grpc.StatusCode`` (this package does not import grpc; the
gateway maps the name). The transports render every error through these two, never by hand.
"""

from __future__ import annotations

import math


class RoostError(Exception):
    """Base class: ``status_code`` and ``grpc_code`` say how the gateway answers with it."""

    status_code: int = 500
    grpc_code: str = "INTERNAL"
    retry_after_s: float | None = None
    """When set, clients are told to retry after this many seconds (``Retry-After``)."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        if retry_after_s is not None:
            self.retry_after_s = retry_after_s

    def to_http(self) -> tuple[int, dict[str, str]]:
        """(HTTP status, extra response headers)."""
        if self.retry_after_s is None:
            return self.status_code, {}
        return self.status_code, {"Retry-After": str(max(0, math.ceil(self.retry_after_s)))}

    def to_grpc(self) -> str:
        """The name of the gRPC status code (``"UNAVAILABLE"``)."""
        return self.grpc_code


class InvalidRequest(RoostError):
    status_code = 400
    grpc_code = "INVALID_ARGUMENT"


class PayloadTooLarge(InvalidRequest):
    status_code = 413
    grpc_code = "RESOURCE_EXHAUSTED"


class UnsupportedMediaType(InvalidRequest):
    status_code = 415


class Unauthorized(RoostError):
    status_code = 401
    grpc_code = "UNAUTHENTICATED"

    def to_http(self) -> tuple[int, dict[str, str]]:
        return self.status_code, {"WWW-Authenticate": 'Bearer realm="roost"'}


class Forbidden(RoostError):
    status_code = 403
    grpc_code = "PERMISSION_DENIED"


class NotFound(RoostError):
    status_code = 404
    grpc_code = "NOT_FOUND"


class InvalidTransition(RoostError):
    status_code = 409
    grpc_code = "FAILED_PRECONDITION"


class Conflict(RoostError):
    status_code = 409
    grpc_code = "FAILED_PRECONDITION"


class ArtifactIntegrityError(RoostError):
    status_code = 409
    grpc_code = "FAILED_PRECONDITION"


class RateLimited(RoostError):
    status_code = 429
    grpc_code = "RESOURCE_EXHAUSTED"


class ServiceUnavailable(RoostError):
    status_code = 503
    grpc_code = "UNAVAILABLE"


class Draining(ServiceUnavailable):
    """The gateway is shutting down: retry elsewhere (or here, after a restart)."""

    retry_after_s = 1.0


class DeadlineExceeded(RoostError):
    status_code = 504
    grpc_code = "DEADLINE_EXCEEDED"
