"""The deployment contract: topics, the signed model manifest, chunking, refusal reasons.

Why a module of its own, beside ``edgeloop.contract``: the cloud deployer and
the edge model manager both import it, and it needs the model metadata schema
(``edgeloop.modelfile``) and Ed25519 (``edgeloop.signing``), which the
basic wire contract does not. Like the contract it imports no numpy, no
interpreter and no influxdb-client.

Topics::

    models/{model}/deploy               cloud -> edge   ModelManifest, signed (retained, QoS 1);
                                                        an empty retained payload clears it
    models/{model}/{version}/chunk/{i}  cloud -> edge   raw artifact bytes [i*chunk_size, (i+1)*chunk_size)
                                                        (retained, QoS 1; cleared when superseded)

Signature: Ed25519 over :func:`canonical_bytes` of the manifest's JSON object
without its ``signature`` field (keys sorted, no whitespace, UTF-8). The edge
verifies it over the object exactly as received (``json.loads`` then
canonicalised), *before* schema validation, so unsigned input never reaches
the schema parser and the two sides need not run the same pydantic version.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import json
import math
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgeloop.errors import ModelError
from edgeloop.contract import TOPIC_LEVEL_PATTERN, ContractError, TopicLevel, check_level
from edgeloop.modelfile import ModelMetadata

DEPLOY_SCHEMA_VERSION = 1
DEPLOY_FILTER = "models/+/deploy"
MAX_MANIFEST_BYTES = 512 * 1024
MAX_CHUNKS = 65536
MAX_SELFTEST_ROWS = 64
MAX_SELFTEST_VALUES = 65536

#: Every reason an edge refuses a deployment, as reported in ``NodeStatus.last_deploy``
#: and dead-letters (``deadletter/edge``). The current model keeps serving in every case.
REFUSAL_REASONS: dict[str, str] = {
    "oversized_manifest": f"manifest larger than {MAX_MANIFEST_BYTES} bytes",
    "malformed_manifest": "manifest is not a JSON object",
    "unsigned": "manifest has no signature",
    "unknown_key": "manifest is signed with a key this node does not trust (deploy.public_key_file(s))",
    "bad_signature": "signature does not verify (tampered manifest or wrong key)",
    "invalid_manifest": "signed, but fields are missing or inconsistent",
    "too_large": "artifact larger than deploy.max_artifact_bytes",
    "incomplete": "not every chunk arrived within deploy.chunk_timeout_s",
    "bad_chunk": "a chunk has the wrong length or digest (dropped; the transfer waits for the right one)",
    "hash_mismatch": "sha256 of the reassembled artifact differs from the manifest",
    "load_failed": "the interpreter cannot load the artifact, or its tensors differ from its metadata",
    "spec_mismatch": "the model's input does not match what the pipeline produces",
    "selftest_failed": "outputs on the self-test vectors are outside the tolerance",
    "wrong_model": "manifest names a model this node does not run",
    "unhealthy": "canary check: anomaly rate, invalid outputs or latency over bounds after the swap",
    "replayed": "signed, but its seq is not above the newest deployment this node recorded for the model",
    "unsequenced": "signed without a seq, after this node recorded a sequenced deployment of the model",
    "timeout": "loading and self-testing the artifact in a child process did not finish in deploy.trial_timeout_s",
    "interrupted": "the edge process stopped while loading this model or while it was on probation; not retried",
}

_GLOB_RE = re.compile(r"^[A-Za-z0-9_.:*?\[\]!-]{1,64}$")


class DeployRefused(ModelError):
    """A deployment this node will not install; ``reason`` is a key of :data:`REFUSAL_REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


# --------------------------------------------------------------------------- topics


def deploy_topic(model: str) -> str:
    return f"models/{check_level(model, 'model')}/deploy"


def chunk_topic(model: str, version: str, index: int) -> str:
    return f"models/{check_level(model, 'model')}/{check_level(version, 'version')}/chunk/{int(index)}"


def chunk_filter(model: str, version: str) -> str:
    """Subscription for every chunk of one version."""
    return f"models/{check_level(model, 'model')}/{check_level(version, 'version')}/chunk/+"


def parse_deploy_topic(topic: str) -> str:
    """``models/{model}/deploy`` -> model; ContractError otherwise."""
    parts = topic.split("/")
    if len(parts) != 3 or parts[0] != "models" or parts[2] != "deploy":
        raise ContractError("bad_topic", f"topic {topic[:80]!r} is not models/{{model}}/deploy")
    return check_level(parts[1], "model")


def parse_chunk_topic(topic: str) -> tuple[str, str, int]:
    """``models/{model}/{version}/chunk/{i}`` -> (model, version, i); ContractError otherwise."""
    parts = topic.split("/")
    if len(parts) != 5 or parts[0] != "models" or parts[3] != "chunk":
        raise ContractError("bad_topic", f"topic {topic[:80]!r} is not models/{{model}}/{{version}}/chunk/{{i}}")
    index = parts[4]
    if not index.isascii() or not index.isdigit() or len(index) > 6 or (len(index) > 1 and index[0] == "0"):
        raise ContractError("bad_topic", f"chunk index {index[:16]!r} is not a number")
    return check_level(parts[1], "model"), check_level(parts[2], "version"), int(index)


# --------------------------------------------------------------------------- chunks


def chunk_count(size: int, chunk_size: int) -> int:
    return max(1, math.ceil(size / chunk_size))


def split_chunks(content: bytes, chunk_size: int) -> list[bytes]:
    return [content[i : i + chunk_size] for i in range(0, len(content), chunk_size)] or [b""]


def expected_chunk_length(size: int, chunk_size: int, index: int) -> int:
    return min(chunk_size, size - index * chunk_size)


def chunk_digest(chunk: bytes) -> str:
    """What a manifest's ``chunk_digests`` holds per chunk: the first 128 bits of its sha256, in hex."""
    return hashlib.sha256(chunk).hexdigest()[:32]


# --------------------------------------------------------------------------- manifest

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Tolerance = Annotated[float, Field(ge=0, le=1e6, allow_inf_nan=False)]


class SelfTest(BaseModel):
    """Input rows (flattened) and the outputs the model must give for them.

    Passes when ``|actual - expected| <= atol + rtol * |expected|`` element-wise
    (numpy.allclose semantics). Computed on the cloud side with the same
    interpreter family the edge runs.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    inputs: Annotated[list[list[FiniteFloat]], Field(min_length=1, max_length=MAX_SELFTEST_ROWS)]
    expected: Annotated[list[list[FiniteFloat]], Field(min_length=1, max_length=MAX_SELFTEST_ROWS)]
    atol: Tolerance = 1e-3
    rtol: Tolerance = 1e-3

    @model_validator(mode="after")
    def _rows(self) -> SelfTest:
        if len(self.inputs) != len(self.expected):
            raise ValueError(f"{len(self.inputs)} input rows but {len(self.expected)} expected rows")
        total = sum(len(r) for r in self.inputs) + sum(len(r) for r in self.expected)
        if total > MAX_SELFTEST_VALUES:
            raise ValueError(f"self-test has more than {MAX_SELFTEST_VALUES} values")
        return self


class ModelManifest(BaseModel):
    """The retained message on ``models/{model}/deploy``: what to install, where, and proof of origin.

    ``targets`` are node ids or shell-style globs (``fnmatch``): ``["*"]`` is
    the whole fleet, ``["edge-3"]`` or ``["site-a-*"]`` a canary subset.
    ``deploy_id`` is unique per publication, so the deployer can tell status
    reports of this rollout from those of an earlier one. ``seq`` orders the
    publications of one model (the registry's counter, signed with the rest):
    an edge records the highest it has seen and refuses anything not above it
    (``replayed``), so an old signed manifest cannot be re-published to roll a
    fleet back; an intended rollback is a new publication with a new ``seq``.
    Manifests from deployers that predate it carry none (see ``unsequenced``).
    ``chunk_digests`` (:func:`chunk_digest` of each chunk) let the edge drop a
    substituted chunk on arrival and wait for the right one, instead of
    failing the whole artifact's sha256 at the end.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = DEPLOY_SCHEMA_VERSION
    model: TopicLevel
    version: Annotated[str, Field(pattern=TOPIC_LEVEL_PATTERN)]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    size: Annotated[int, Field(ge=1, le=2**40)]
    chunk_size: Annotated[int, Field(ge=64, le=16 * 1024 * 1024)]
    chunks: Annotated[int, Field(ge=1, le=MAX_CHUNKS)]
    chunk_digests: Annotated[list[Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]], Field(max_length=MAX_CHUNKS)] | None = None
    targets: Annotated[list[Annotated[str, Field(pattern=_GLOB_RE.pattern)]], Field(min_length=1, max_length=1000)]
    phase: Literal["canary", "fleet"] = "fleet"
    deploy_id: Annotated[str, Field(pattern=r"^[0-9a-f]{8,32}$")]
    seq: Annotated[int, Field(ge=1, le=2**62)] | None = None
    parent: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    created: Annotated[float, Field(gt=0, lt=4102444800.0)]
    metadata: ModelMetadata
    selftest: SelfTest
    key_id: Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")] | None = None
    signature: Annotated[str, Field(max_length=256)] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ModelManifest:
        if self.chunks != chunk_count(self.size, self.chunk_size):
            raise ValueError(f"{self.size} bytes in chunks of {self.chunk_size} make "
                             f"{chunk_count(self.size, self.chunk_size)} chunks, not {self.chunks}")
        if self.chunk_digests is not None and len(self.chunk_digests) != self.chunks:
            raise ValueError(f"{len(self.chunk_digests)} chunk digests for {self.chunks} chunks")
        meta = self.metadata
        if (meta.name, meta.version, meta.sha256) != (self.model, self.version, self.sha256):
            raise ValueError("metadata name/version/sha256 differ from the manifest's")
        return self

    def targets_node(self, node_id: str) -> bool:
        return any(fnmatch.fnmatchcase(node_id, pattern) for pattern in self.targets)

    def unsigned_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"signature"}, exclude_none=True)


def canonical_bytes(obj: Any) -> bytes:
    """The bytes that are signed: sorted keys, no whitespace, UTF-8, no NaN/Infinity."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def sign_manifest(manifest: ModelManifest, key: Any) -> bytes:
    """Sign with a :class:`edgeloop.signing.SigningKey`; return the payload to publish."""
    body = manifest.unsigned_dict()
    body["key_id"] = key.key_id
    body["signature"] = base64.b64encode(key.sign(canonical_bytes({k: v for k, v in body.items() if k != "signature"}))).decode()
    return canonical_bytes(body)


def verify_manifest(payload: bytes, keys: Any, max_bytes: int = MAX_MANIFEST_BYTES) -> ModelManifest:
    """Check the signature with the trusted :class:`edgeloop.signing.VerifyKey` (one, or several during a
    key rotation: the manifest's ``key_id`` picks one), then the schema.

    Raises :class:`DeployRefused` with one of the manifest reasons of
    :data:`REFUSAL_REASONS`; never anything else, whatever the payload.
    """
    trusted = {k.key_id: k for k in ([keys] if hasattr(keys, "key_id") else keys)}
    if len(payload) > max_bytes:
        raise DeployRefused("oversized_manifest", f"manifest of {len(payload)} bytes exceeds {max_bytes}")
    try:
        obj = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise DeployRefused("malformed_manifest", f"not JSON: {str(exc)[:200]}") from None
    if not isinstance(obj, dict):
        raise DeployRefused("malformed_manifest", f"manifest is a JSON {type(obj).__name__}, not an object")
    signature = obj.pop("signature", None)
    if signature is None:
        raise DeployRefused("unsigned", "manifest has no signature")
    key_id = obj.get("key_id")
    key = trusted.get(key_id) if isinstance(key_id, str) else None
    if key is None:
        raise DeployRefused("unknown_key", f"manifest signed with key {str(key_id)[:32]!r}, this node trusts "
                                           f"{', '.join(sorted(trusted))}")
    try:
        raw = base64.b64decode(signature, validate=True) if isinstance(signature, str) else b""
        body = canonical_bytes(obj)
    except (binascii.Error, ValueError, RecursionError):
        raw, body = b"", b""
    if len(raw) != 64 or not key.verify(raw, body):
        raise DeployRefused("bad_signature", f"signature does not verify with key {key.key_id}")
    try:
        return ModelManifest.model_validate({**obj, "signature": signature})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in exc.errors()[:3]
        )
        raise DeployRefused("invalid_manifest", problems[:1000]) from None
