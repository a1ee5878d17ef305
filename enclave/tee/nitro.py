"""AWS Nitro Enclaves evidence from the Nitro Secure Module (`/dev/nsm`).

The NSM driver takes one ioctl, NSM_IOCTL_REQUEST = _IOWR(0x0A, 0, struct nsm_message), where
`struct nsm_message { struct iovec request; struct iovec response; }`: the request is a CBOR map
(at most 4 KiB), the response a CBOR map written into our buffer (at most 12 KiB) whose length
the driver sets in `response.iov_len`. An attestation request is

    {"Attestation": {"user_data": bytes, "nonce": bytes, "public_key": bytes | null}}

and the answer `{"Attestation": {"document": COSE_Sign1 bytes}}` or `{"Error": "<code>"}`.

What we put in the document: `user_data` = the 64 bytes of report data (the verifier compares it
as report data, exactly like SEV-SNP/TDX report data), and `nonce` = the same 64 bytes, so that a
verifier comparing the document's nonce field (`aaudit-verify evidence --nonce`) sees the same
session value it would find in SNP/TDX report data; the client's own 32-byte nonce is already
inside that value (verifier/binding.py). `public_key` is left out unless the caller gives one: the
enclave's keys are bound through the report data.

We talk to the driver directly rather than through `aws-nsm-interface` (last release 2020, pulls
in `ioctl-opt`, and offers no way to swap the device for tests): the ioctl is a few lines, and
`transport` lets tests answer with a real Nitro document.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
from typing import Any, Callable

import cbor2

from enclave.tee import REPORT_DATA_LEN, AttestationError
from verifier.models import Evidence

DEFAULT_DEVICE = "/dev/nsm"
NSM_REQUEST_MAX = 0x1000
NSM_RESPONSE_MAX = 0x3000
_COSE_SIGN1_TAG = 18


class IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class NsmMessage(ctypes.Structure):
    _fields_ = [("request", IoVec), ("response", IoVec)]


NSM_IOCTL_REQUEST = (3 << 30) | (ctypes.sizeof(NsmMessage) << 16) | (0x0A << 8) | 0

NsmTransport = Callable[[bytes], bytes]


class DevNsm:
    """The real transport: one CBOR request in, one CBOR response out, through the NSM ioctl."""

    def __init__(self, device: str = DEFAULT_DEVICE, ioctl: Callable[[int, int, Any], Any] = fcntl.ioctl) -> None:
        self.device = device
        self._ioctl = ioctl

    def __call__(self, request: bytes) -> bytes:
        if len(request) > NSM_REQUEST_MAX:
            raise AttestationError(f"NSM request is {len(request)} bytes, over the {NSM_REQUEST_MAX}-byte limit")
        req = ctypes.create_string_buffer(request, len(request))
        resp = ctypes.create_string_buffer(NSM_RESPONSE_MAX)
        msg = NsmMessage(IoVec(ctypes.addressof(req), len(request)), IoVec(ctypes.addressof(resp), NSM_RESPONSE_MAX))
        try:
            fd = os.open(self.device, os.O_RDWR)
        except OSError as exc:
            raise AttestationError(f"cannot open {self.device}: {exc.strerror}") from None
        try:
            self._ioctl(fd, NSM_IOCTL_REQUEST, msg)
        except OSError as exc:
            raise AttestationError(f"NSM ioctl on {self.device} failed: {exc.strerror}") from None
        finally:
            os.close(fd)
        n = msg.response.iov_len
        if not 0 < n <= NSM_RESPONSE_MAX:
            raise AttestationError(f"NSM driver reports a {n}-byte response (buffer {NSM_RESPONSE_MAX} bytes)")
        return resp.raw[:n]


def _document(response: bytes) -> bytes:
    """The attestation document of an NSM response; AttestationError with the NSM's reason otherwise."""
    try:
        obj = cbor2.loads(response)
    except (cbor2.CBORDecodeError, ValueError, EOFError) as exc:
        raise AttestationError(f"NSM response is not CBOR ({exc})") from None
    if isinstance(obj, dict) and "Error" in obj:
        raise AttestationError(f"NSM refused the attestation request: {obj['Error']}")
    inner = obj.get("Attestation") if isinstance(obj, dict) else None
    doc = inner.get("document") if isinstance(inner, dict) else None
    if not isinstance(doc, bytes) or not doc:
        raise AttestationError("NSM response carries no Attestation.document")
    try:
        cose = cbor2.loads(doc)
    except (cbor2.CBORDecodeError, ValueError, EOFError) as exc:
        raise AttestationError(f"NSM attestation document is not CBOR ({exc})") from None
    if isinstance(cose, cbor2.CBORTag) and cose.tag == _COSE_SIGN1_TAG:
        cose = cose.value
    if not (isinstance(cose, list) and len(cose) == 4):
        raise AttestationError("NSM attestation document is not a COSE_Sign1 structure")
    return doc


class NitroAttester:
    platform = "nitro"

    def __init__(self, device: str = DEFAULT_DEVICE, *, public_key: bytes | None = None,
                 transport: NsmTransport | None = None) -> None:
        self.public_key = public_key
        self.transport = transport or DevNsm(device)

    def attest(self, report_data: bytes) -> Evidence:
        if len(report_data) != REPORT_DATA_LEN:
            raise ValueError(f"report data must be {REPORT_DATA_LEN} bytes, got {len(report_data)}")
        request = cbor2.dumps({"Attestation": {
            "user_data": report_data, "nonce": report_data, "public_key": self.public_key}})
        return Evidence("nitro", _document(self.transport(request)))
