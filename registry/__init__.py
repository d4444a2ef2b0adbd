"""Roost's core domain: models, versions, the lifecycle, deployments, artifacts and audit."""

from registry.artifacts import ArtifactStore
from registry.audit import AuditRecord, AuditVerification
from registry.errors import (
    ArtifactIntegrityError,
    Conflict,
    DeadlineExceeded,
    InvalidRequest,
    InvalidTransition,
    NotFound,
    RoostError,
    ServiceUnavailable,
    Unauthorized,
)
from registry.lifecycle import (
    ROLLBACK_TRANSITIONS,
    SERVABLE,
    TRANSITIONS,
    State,
    check_transition,
    parse_state,
)
from registry.rollout import (
    DEFAULT_SCHEDULE,
    RolloutPhase,
    RolloutStatus,
    StaleRollout,
    check_schedule,
    parse_schedule,
)
from registry.service import DeploymentInfo, ModelInfo, Registry, VersionInfo
from registry.serving_config import ServingConfig
from registry.settings import RoostSettings
from registry.signature import Signature, TensorSpec, signature_from_onnx

__all__ = [
    "DEFAULT_SCHEDULE",
    "ROLLBACK_TRANSITIONS",
    "SERVABLE",
    "TRANSITIONS",
    "ArtifactIntegrityError",
    "ArtifactStore",
    "AuditRecord",
    "AuditVerification",
    "Conflict",
    "DeadlineExceeded",
    "DeploymentInfo",
    "InvalidRequest",
    "InvalidTransition",
    "ModelInfo",
    "NotFound",
    "Registry",
    "RoostError",
    "RolloutPhase",
    "RolloutStatus",
    "RoostSettings",
    "ServiceUnavailable",
    "ServingConfig",
    "Signature",
    "StaleRollout",
    "State",
    "TensorSpec",
    "Unauthorized",
    "VersionInfo",
    "check_schedule",
    "check_transition",
    "parse_schedule",
    "parse_state",
    "signature_from_onnx",
]
