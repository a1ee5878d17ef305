from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AttestRequest(_message.Message):
    __slots__ = ("nonce",)
    NONCE_FIELD_NUMBER: _ClassVar[int]
    nonce: bytes
    def __init__(self, nonce: _Optional[bytes] = ...) -> None: ...

class AttestResponse(_message.Message):
    __slots__ = ("evidence", "signing_public_key", "hpke_suite", "hpke_public_key", "platform", "code_identity", "tls_public_key")
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    SIGNING_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    HPKE_SUITE_FIELD_NUMBER: _ClassVar[int]
    HPKE_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    CODE_IDENTITY_FIELD_NUMBER: _ClassVar[int]
    TLS_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    evidence: bytes
    signing_public_key: bytes
    hpke_suite: str
    hpke_public_key: bytes
    platform: str
    code_identity: str
    tls_public_key: bytes
    def __init__(self, evidence: _Optional[bytes] = ..., signing_public_key: _Optional[bytes] = ..., hpke_suite: _Optional[str] = ..., hpke_public_key: _Optional[bytes] = ..., platform: _Optional[str] = ..., code_identity: _Optional[str] = ..., tls_public_key: _Optional[bytes] = ...) -> None: ...

class CreateSessionRequest(_message.Message):
    __slots__ = ("attest_nonce", "provider_key", "auditor_key", "creator_role", "signature")
    ATTEST_NONCE_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_KEY_FIELD_NUMBER: _ClassVar[int]
    AUDITOR_KEY_FIELD_NUMBER: _ClassVar[int]
    CREATOR_ROLE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    attest_nonce: bytes
    provider_key: bytes
    auditor_key: bytes
    creator_role: str
    signature: bytes
    def __init__(self, attest_nonce: _Optional[bytes] = ..., provider_key: _Optional[bytes] = ..., auditor_key: _Optional[bytes] = ..., creator_role: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...

class JoinSessionRequest(_message.Message):
    __slots__ = ("session_id", "role", "signature")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    role: str
    signature: bytes
    def __init__(self, session_id: _Optional[str] = ..., role: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...

class SessionInfo(_message.Message):
    __slots__ = ("session_id", "session_nonce", "provider_key", "auditor_key", "joined", "state", "job")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_NONCE_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_KEY_FIELD_NUMBER: _ClassVar[int]
    AUDITOR_KEY_FIELD_NUMBER: _ClassVar[int]
    JOINED_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    session_nonce: bytes
    provider_key: bytes
    auditor_key: bytes
    joined: _containers.RepeatedScalarFieldContainer[str]
    state: str
    job: int
    def __init__(self, session_id: _Optional[str] = ..., session_nonce: _Optional[bytes] = ..., provider_key: _Optional[bytes] = ..., auditor_key: _Optional[bytes] = ..., joined: _Optional[_Iterable[str]] = ..., state: _Optional[str] = ..., job: _Optional[int] = ...) -> None: ...

class UploadHeader(_message.Message):
    __slots__ = ("kind", "digest", "wrapped_key", "stream_header", "party_public_key", "attest_nonce", "session_id", "signature")
    KIND_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    WRAPPED_KEY_FIELD_NUMBER: _ClassVar[int]
    STREAM_HEADER_FIELD_NUMBER: _ClassVar[int]
    PARTY_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    ATTEST_NONCE_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    kind: str
    digest: str
    wrapped_key: bytes
    stream_header: bytes
    party_public_key: bytes
    attest_nonce: bytes
    session_id: str
    signature: bytes
    def __init__(self, kind: _Optional[str] = ..., digest: _Optional[str] = ..., wrapped_key: _Optional[bytes] = ..., stream_header: _Optional[bytes] = ..., party_public_key: _Optional[bytes] = ..., attest_nonce: _Optional[bytes] = ..., session_id: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...

class UploadPart(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: UploadHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[UploadHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class UploadResult(_message.Message):
    __slots__ = ("kind", "digest", "plaintext_bytes", "manifest_digest")
    KIND_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    PLAINTEXT_BYTES_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_DIGEST_FIELD_NUMBER: _ClassVar[int]
    kind: str
    digest: str
    plaintext_bytes: int
    manifest_digest: str
    def __init__(self, kind: _Optional[str] = ..., digest: _Optional[str] = ..., plaintext_bytes: _Optional[int] = ..., manifest_digest: _Optional[str] = ...) -> None: ...

class ManifestRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class Manifest(_message.Message):
    __slots__ = ("manifest_json", "digest", "approved_by", "complete", "problems", "state", "queue_position")
    MANIFEST_JSON_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    APPROVED_BY_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_POSITION_FIELD_NUMBER: _ClassVar[int]
    manifest_json: bytes
    digest: str
    approved_by: _containers.RepeatedScalarFieldContainer[str]
    complete: bool
    problems: _containers.RepeatedScalarFieldContainer[str]
    state: str
    queue_position: int
    def __init__(self, manifest_json: _Optional[bytes] = ..., digest: _Optional[str] = ..., approved_by: _Optional[_Iterable[str]] = ..., complete: _Optional[bool] = ..., problems: _Optional[_Iterable[str]] = ..., state: _Optional[str] = ..., queue_position: _Optional[int] = ...) -> None: ...

class Approval(_message.Message):
    __slots__ = ("session_id", "role", "manifest_digest", "signature")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    role: str
    manifest_digest: str
    signature: bytes
    def __init__(self, session_id: _Optional[str] = ..., role: _Optional[str] = ..., manifest_digest: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...

class ApprovalResult(_message.Message):
    __slots__ = ("approved_by", "ready")
    APPROVED_BY_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    approved_by: _containers.RepeatedScalarFieldContainer[str]
    ready: bool
    def __init__(self, approved_by: _Optional[_Iterable[str]] = ..., ready: _Optional[bool] = ...) -> None: ...

class RunRequest(_message.Message):
    __slots__ = ("nonce", "session_id", "role", "manifest_digest", "signature")
    NONCE_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    nonce: bytes
    session_id: str
    role: str
    manifest_digest: str
    signature: bytes
    def __init__(self, nonce: _Optional[bytes] = ..., session_id: _Optional[str] = ..., role: _Optional[str] = ..., manifest_digest: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...

class SessionAction(_message.Message):
    __slots__ = ("session_id", "role", "manifest_digest", "signature")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    role: str
    manifest_digest: str
    signature: bytes
    def __init__(self, session_id: _Optional[str] = ..., role: _Optional[str] = ..., manifest_digest: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("stage", "fraction", "message")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    stage: str
    fraction: float
    message: str
    def __init__(self, stage: _Optional[str] = ..., fraction: _Optional[float] = ..., message: _Optional[str] = ...) -> None: ...

class RunEvent(_message.Message):
    __slots__ = ("progress", "bundle", "samples_chunk")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_CHUNK_FIELD_NUMBER: _ClassVar[int]
    progress: Progress
    bundle: bytes
    samples_chunk: bytes
    def __init__(self, progress: _Optional[_Union[Progress, _Mapping]] = ..., bundle: _Optional[bytes] = ..., samples_chunk: _Optional[bytes] = ...) -> None: ...

class ResultRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class PrepareRequest(_message.Message):
    __slots__ = ("session_id", "role", "method", "recipient_suite", "recipient_public_key", "nonce", "signature")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_SUITE_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    role: str
    method: str
    recipient_suite: str
    recipient_public_key: bytes
    nonce: bytes
    signature: bytes
    def __init__(self, session_id: _Optional[str] = ..., role: _Optional[str] = ..., method: _Optional[str] = ..., recipient_suite: _Optional[str] = ..., recipient_public_key: _Optional[bytes] = ..., nonce: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class PreparedModel(_message.Message):
    __slots__ = ("wrapped_key", "sealed_meta", "bundle")
    WRAPPED_KEY_FIELD_NUMBER: _ClassVar[int]
    SEALED_META_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    wrapped_key: bytes
    sealed_meta: bytes
    bundle: bytes
    def __init__(self, wrapped_key: _Optional[bytes] = ..., sealed_meta: _Optional[bytes] = ..., bundle: _Optional[bytes] = ...) -> None: ...

class PrepareEvent(_message.Message):
    __slots__ = ("progress", "sealed_chunk", "prepared")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    SEALED_CHUNK_FIELD_NUMBER: _ClassVar[int]
    PREPARED_FIELD_NUMBER: _ClassVar[int]
    progress: Progress
    sealed_chunk: bytes
    prepared: PreparedModel
    def __init__(self, progress: _Optional[_Union[Progress, _Mapping]] = ..., sealed_chunk: _Optional[bytes] = ..., prepared: _Optional[_Union[PreparedModel, _Mapping]] = ...) -> None: ...

class AttachPreparedRequest(_message.Message):
    __slots__ = ("session_id", "role", "bundle", "signature")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    role: str
    bundle: bytes
    signature: bytes
    def __init__(self, session_id: _Optional[str] = ..., role: _Optional[str] = ..., bundle: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class AttachPreparedResult(_message.Message):
    __slots__ = ("statement_digest", "manifest_digest")
    STATEMENT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_DIGEST_FIELD_NUMBER: _ClassVar[int]
    statement_digest: str
    manifest_digest: str
    def __init__(self, statement_digest: _Optional[str] = ..., manifest_digest: _Optional[str] = ...) -> None: ...
