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
from registry.lifecycle import SERVABLE, TRANSITIONS, State, check_transition, parse_state
from registry.service import DeploymentInfo, ModelInfo, Registry, VersionInfo
from registry.serving_config import ServingConfig
from registry.settings import RoostSettings
from registry.signature import Signature, TensorSpec, signature_from_onnx

__all__ = [
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
    "RoostSettings",
    "ServiceUnavailable",
    "ServingConfig",
    "Signature",
    "State",
    "TensorSpec",
    "Unauthorized",
    "VersionInfo",
    "check_transition",
    "parse_state",
    "signature_from_onnx",
]
