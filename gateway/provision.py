"""The provider's model upload into the gateway: the audit enclave's sealing, key wrap and signed,
replay-proof header, aimed at one gateway boot.

Only the provider key named in the audit's manifest may upload, only the audited model digest is
accepted (the claimed digest before anything is decrypted, the computed digest before anything is
served), the wrapped key opens only for this gateway's key, this provider, this serving id and an
attestation nonce this boot issued (once).
"""

from __future__ import annotations

import base64
import binascii
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

from enclave.keys import BootKeys
from enclave.session import NonceBook
from enclave.workdir import wipe
from sealing.stream import TAG_LEN, DirectorySink, Unsealer
from verifier import wire
from verifier.binding import NONCE_LEN, upload_message, wrap_info
from verifier.errors import AAuditError, UnusableInput
from verifier.inputs import load_json
from verifier.manifest import verify_party_signature
from verifier.models import canonical_json

UPLOAD_HEADER = "aaudit-upload"
MAX_HEADER_CHARS = 8192


class ProvisionRefused(AAuditError):
    """The upload is not the audited model from the audited provider for this gateway boot."""


@dataclass(frozen=True)
class ProvisionHeader:
    """What the provider signs and sends in the `aaudit-upload` HTTP header (base64 of its JSON)."""

    digest: str
    wrapped_key: bytes
    stream_header: bytes
    party_key: bytes
    attest_nonce: bytes
    signature: bytes

    def encode(self) -> str:
        return base64.b64encode(canonical_json(wire.to_json(self))).decode("ascii")

    @classmethod
    def decode(cls, text: str) -> "ProvisionHeader":
        if len(text) > MAX_HEADER_CHARS:
            raise UnusableInput(f"{UPLOAD_HEADER} header is longer than {MAX_HEADER_CHARS} characters")
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise UnusableInput(f"{UPLOAD_HEADER} header is not base64") from None
        return wire.from_json(cls, load_json(raw, UPLOAD_HEADER), UPLOAD_HEADER)


class Receiving:
    """One upload in flight: re-chunks the HTTP body into sealed chunks and unseals them to tmpfs."""

    def __init__(self, unsealer: Unsealer, folder: Path, expected_digest: str, max_bytes: int) -> None:
        self.unsealer, self.folder = unsealer, folder
        self.expected_digest, self.max_bytes = expected_digest, max_bytes
        self.received = 0
        self._chunk = unsealer.chunk_size + TAG_LEN
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self.received += len(data)
        if self.received > self.max_bytes:
            self.abort()
            raise ProvisionRefused(f"the upload exceeds this gateway's limit of {self.max_bytes} bytes")
        self._buffer += data
        view, start = memoryview(self._buffer), 0
        while len(self._buffer) - start > self._chunk:  # the last chunk is fed by finish: it may be full-size
            self.unsealer.feed(view[start:start + self._chunk])
            start += self._chunk
        view.release()
        del self._buffer[:start]

    def finish(self) -> str:
        if self._buffer:
            self.unsealer.feed(bytes(self._buffer))
            self._buffer.clear()
        return self.unsealer.finish(expected_digest=self.expected_digest)

    def abort(self) -> None:
        self._buffer.clear()
        self.unsealer.abort()
        wipe(self.folder)


class Provisioner:
    """Accepts the audited model once per boot."""

    def __init__(self, keys: BootKeys, serving_id: str, provider_key: bytes, model_digest: str, workdir: Path, *,
                 max_bytes: int = 1 << 40) -> None:
        self.keys, self.serving_id = keys, serving_id
        self.provider_key, self.model_digest = provider_key, model_digest
        self.workdir, self.max_bytes = workdir, max_bytes
        self.nonces = NonceBook()
        self._busy = threading.Lock()

    def begin(self, header: ProvisionHeader) -> Receiving:
        """Check the signed header and open the wrapped key; the caller then feeds the body."""
        if len(header.attest_nonce) != NONCE_LEN:
            raise UnusableInput(f"attestNonce must be {NONCE_LEN} bytes")
        if header.party_key != self.provider_key:
            raise ProvisionRefused("only the provider named in the audit's manifest may upload the model; this "
                                   "upload is signed for another key")
        if header.digest != self.model_digest:
            raise ProvisionRefused(f"this gateway serves only the audited model {self.model_digest}; the upload "
                                   f"is of {header.digest[:80]}. Upload the model the audit measured")
        message = upload_message(self.keys.signing_public, self.serving_id, "model", header.digest,
                                 header.stream_header, header.wrapped_key, header.attest_nonce)
        if not verify_party_signature(header.party_key, message, header.signature):
            raise ProvisionRefused("the upload header's signature does not verify with the provider key for this "
                                   "gateway, serving id, digest, stream and nonce (altered or replayed)")
        if not self._busy.acquire(blocking=False):
            raise ProvisionRefused("another model upload is in progress or the model is already provisioned")
        try:
            self.nonces.use(header.attest_nonce, "model upload")
            try:
                data_key = self.keys.hpke.unwrap(header.wrapped_key, wrap_info(
                    "model", header.digest, self.keys.signing_public, header.party_key, self.serving_id,
                    header.attest_nonce))
            except AAuditError:
                raise ProvisionRefused("the wrapped data key does not open for this gateway, provider, digest "
                                       "and nonce (wrapped for another context, or altered)") from None
            folder = self.workdir / f"model-{secrets.token_hex(8)}"
            unsealer = Unsealer(header.stream_header, data_key, "model", DirectorySink(folder), expected_kind="model")
            del data_key
            return Receiving(unsealer, folder, self.model_digest, self.max_bytes)
        except BaseException:
            self._busy.release()
            raise

    def failed(self) -> None:
        """The upload did not complete: another may be tried (with a fresh attestation)."""
        self._busy.release()

