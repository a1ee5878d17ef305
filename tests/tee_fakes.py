"""Fake TEE devices that answer with real evidence bytes from the committed vectors (tests/vectors.py).

Each fake follows the kernel / library interface it stands for and records what the attester
sent, so tests check both directions: the request the attester made (report data, nonce, struct
layout) and how it handles the device's answer. Struct layouts here are written out from the
kernel headers independently of the attester modules, so a layout mistake there shows up here.
"""

from __future__ import annotations

import base64
import ctypes
import errno
import os
import struct
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cbor2
import vectors

from enclave.tee.configfs_tsm import OsFs

# GHCB certificate table GUIDs as virtee/sev and go-sev-guest spell them (RFC 4122 byte order).
VCEK_GUID = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd").bytes
VLEK_GUID = uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1").bytes
ASK_GUID = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782").bytes
ARK_GUID = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae").bytes
CRL_GUID = uuid.UUID("92f81bc3-5811-4d3d-97ff-d19f88dc67ea").bytes


def pem_to_der_list(pem: bytes) -> list[bytes]:
    out = []
    for block in pem.split(b"-----END CERTIFICATE-----")[:-1]:
        body = block.split(b"-----BEGIN CERTIFICATE-----")[1]
        out.append(base64.b64decode(b"".join(body.split())))
    return out


@dataclass(frozen=True)
class SnpVector:
    report: bytes
    vcek: bytes
    ask: bytes
    ark: bytes


def snp_vector() -> SnpVector:
    ask, ark = pem_to_der_list(vectors.read("sev-snp/milan-vcek/ask_ark.pem"))
    return SnpVector(vectors.read("sev-snp/milan-vcek/report.bin"),
                     vectors.read("sev-snp/milan-vcek/vcek.der"), ask, ark)


def cert_table(entries: list[tuple[bytes, bytes]], pad_to: int = 0) -> bytes:
    """A GHCB certificate table: (GUID, data) entries, the all-zero terminator, then the data."""
    header_len = 24 * (len(entries) + 1)
    offset = header_len
    headers, blobs = b"", b""
    for guid, data in entries:
        headers += guid + struct.pack("<II", offset, len(data))
        blobs += data
        offset += len(data)
    table = headers + bytes(24) + blobs
    return table.ljust(pad_to, b"\x00")


def snp_cert_table(v: SnpVector) -> bytes:
    return cert_table([(VCEK_GUID, v.vcek), (ASK_GUID, v.ask), (ARK_GUID, v.ark)], pad_to=4 * 4096)


# ------------------------------------------------------------------------------------- configfs-tsm

@dataclass
class _Entry:
    generation: int = 0
    inblob: bytes = b""
    privlevel: int | None = None


@dataclass
class FakeTsm(OsFs):
    """A configfs-tsm report root on a temporary directory, with the kernel's semantics.

    mkdir makes an entry with its attribute files; writes to inblob/privlevel bump `generation`;
    reading outblob asks `answer(inblob, privlevel)` for the report; rmdir removes the entry with
    its attributes. `interfere` simulates that many concurrent writers (each rewrites inblob right
    after ours); `outblob_errno` makes reading outblob fail like the driver would.
    """

    root: Path
    provider: str
    answer: Callable[[bytes, int | None], bytes]
    auxblob: bytes | None = None  # None: no auxblob attribute (TDX)
    interfere: int = 0
    outblob_errno: int | None = None
    entries: dict[str, _Entry] = field(default_factory=dict)
    created: list[str] = field(default_factory=list)
    inblobs: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def _split(self, path: str) -> tuple[str, str]:
        return os.path.dirname(path), os.path.basename(path)

    def mkdir(self, path: str) -> None:
        os.mkdir(path)
        self.entries[path] = _Entry()
        self.created.append(path)
        attrs = ["inblob", "outblob", "provider", "generation", "privlevel", "privlevel_floor"]
        if self.auxblob is not None:
            attrs.append("auxblob")
        for name in attrs:
            Path(path, name).write_bytes(b"")
        Path(path, "provider").write_text(self.provider + "\n")
        Path(path, "privlevel_floor").write_text("0\n")

    def rmdir(self, path: str) -> None:
        for name in os.listdir(path):
            os.unlink(os.path.join(path, name))
        os.rmdir(path)
        del self.entries[path]

    def write(self, path: str, data: bytes) -> int:
        entry_path, name = self._split(path)
        entry = self.entries[entry_path]
        if name == "inblob":
            if len(data) > 64:
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
            entry.inblob = data
            self.inblobs.append(data)
        elif name == "privlevel":
            entry.privlevel = int(data)
        else:
            raise OSError(errno.EACCES, os.strerror(errno.EACCES))
        entry.generation += 1
        n = super().write(path, data)
        if name == "inblob" and self.interfere:
            self.interfere -= 1
            entry.inblob = b"another process".ljust(64, b"\x00")
            entry.generation += 1
        return n

    def read(self, path: str) -> bytes:
        entry_path, name = self._split(path)
        entry = self.entries.get(entry_path)
        if entry is not None and name == "outblob":
            if self.outblob_errno is not None:
                raise OSError(self.outblob_errno, os.strerror(self.outblob_errno))
            Path(path).write_bytes(self.answer(entry.inblob, entry.privlevel))
        elif entry is not None and name == "generation":
            Path(path).write_text(f"{entry.generation}\n")
        elif entry is not None and name == "auxblob":
            Path(path).write_bytes(self.auxblob or b"")
        return super().read(path)


# ------------------------------------------------------------------------------------- /dev/sev-guest

SNP_GET_REPORT = 0xC0205300
SNP_GET_EXT_REPORT = 0xC0205302


@dataclass
class FakeSevGuest:
    """The sev-guest driver's ioctls, reading and writing the caller's memory as the kernel does."""

    report: bytes
    table: bytes = b""
    status: int = 0
    fail_errno: int | None = None
    fail_exitinfo2: int = 0
    calls: list[tuple[int, bytes, int, int]] = field(default_factory=list)  # code, user_data, vmpl, certs_len

    def __call__(self, fd: int, code: int, io: ctypes.Structure) -> int:
        io_addr = ctypes.addressof(io)
        msg_version, req_addr, resp_addr, _ = struct.unpack("<B7xQQQ", ctypes.string_at(io_addr, 32))
        assert msg_version == 1, "the driver refuses message version 0"
        if code == SNP_GET_EXT_REPORT:
            user_data, vmpl, _, certs_addr, certs_len = struct.unpack("<64sI28sQI4x", ctypes.string_at(req_addr, 112))
        elif code == SNP_GET_REPORT:
            user_data, vmpl, _ = struct.unpack("<64sI28s", ctypes.string_at(req_addr, 96))
            certs_addr, certs_len = 0, 0
        else:
            raise OSError(errno.ENOTTY, os.strerror(errno.ENOTTY))
        self.calls.append((code, user_data, vmpl, certs_len))
        if self.fail_errno is not None:
            ctypes.memmove(io_addr + 24, struct.pack("<Q", self.fail_exitinfo2), 8)
            raise OSError(self.fail_errno, os.strerror(self.fail_errno))
        if code == SNP_GET_EXT_REPORT:
            if certs_len < len(self.table):
                ctypes.memmove(req_addr + 104, struct.pack("<I", len(self.table)), 4)
                ctypes.memmove(io_addr + 24, struct.pack("<Q", 1 << 32), 8)  # vmm_error INVALID_LEN
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            ctypes.memmove(certs_addr, self.table, len(self.table))
        rsp = struct.pack("<II24x", self.status, len(self.report)) + self.report
        ctypes.memmove(resp_addr, rsp, len(rsp))
        return 0


# ------------------------------------------------------------------------------------- /dev/nsm

def nitro_document() -> bytes:
    return base64.b64decode(vectors.read("nitro/eternis-debug/attestation.b64"))


@dataclass
class FakeNsm:
    """An NSM transport: decodes the CBOR request, answers with a fixed CBOR response."""

    response: bytes
    requests: list[object] = field(default_factory=list)

    @classmethod
    def with_document(cls, doc: bytes) -> "FakeNsm":
        return cls(cbor2.dumps({"Attestation": {"document": doc}}))

    def __call__(self, request: bytes) -> bytes:
        self.requests.append(cbor2.loads(request))
        return self.response


@dataclass
class FakeNsmIoctl:
    """The NSM driver's ioctl: reads the request iovec, writes the response and its length."""

    response: bytes
    requests: list[bytes] = field(default_factory=list)

    def __call__(self, fd: int, code: int, msg: ctypes.Structure) -> int:
        assert code == 0xC0200A00
        addr = ctypes.addressof(msg)
        req_base, req_len, resp_base, resp_cap = struct.unpack("<QQQQ", ctypes.string_at(addr, 32))
        self.requests.append(ctypes.string_at(req_base, req_len))
        if len(self.response) > resp_cap:
            raise OSError(errno.EMSGSIZE, os.strerror(errno.EMSGSIZE))
        ctypes.memmove(resp_base, self.response, len(self.response))
        ctypes.memmove(addr + 24, struct.pack("<Q", len(self.response)), 8)
        return 0


# ------------------------------------------------------------------------------------- NVML

def hopper_vector() -> tuple[bytes, bytes]:
    report = bytes.fromhex(vectors.path("nvidia/hopper/report.hex").read_text().strip())
    return report, vectors.read("nvidia/hopper/chain.pem")


class FakeNvml:
    """The slice of pynvml the GPU attester uses, returning pynvml's own result structures."""

    def __init__(self, report: bytes, chain_pem: bytes, *, gpus: int = 1, cc: bool = True,
                 fail: str | None = None, report_size: int | None = None) -> None:
        import pynvml

        self._pynvml = pynvml
        self.NVMLError = pynvml.NVMLError
        self.NVML_CC_SYSTEM_FEATURE_ENABLED = pynvml.NVML_CC_SYSTEM_FEATURE_ENABLED
        self.report, self.chain, self.gpus, self.cc, self.fail = report, chain_pem, gpus, cc, fail
        self.report_size = len(report) if report_size is None else report_size
        self.nonces: list[bytes] = []

    def nvmlSystemGetConfComputeState(self):
        state = self._pynvml.c_nvmlConfComputeSystemState_t()
        state.ccFeature = 1 if self.cc else 0
        return state

    def nvmlDeviceGetCount(self) -> int:
        return self.gpus

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if not 0 <= index < self.gpus:
            raise self._pynvml.NVMLError(self._pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return index

    def nvmlDeviceGetConfComputeGpuAttestationReport(self, handle: int, nonce: bytes):
        if self.fail == "report":
            raise self._pynvml.NVMLError(self._pynvml.NVML_ERROR_NOT_SUPPORTED)
        rep = self._pynvml.c_nvmlConfComputeGpuAttestationReport_t()
        rep.nonce = (ctypes.c_uint8 * len(nonce))(*nonce)
        self.nonces.append(bytes(rep.nonce))
        ctypes.memmove(rep.attestationReport, self.report, len(self.report))
        rep.attestationReportSize = self.report_size
        return rep

    def nvmlDeviceGetConfComputeGpuCertificate(self, handle: int):
        cert = self._pynvml.c_nvmlConfComputeGpuCertificate_t()
        ctypes.memmove(cert.attestationCertChain, self.chain, len(self.chain))
        cert.attestationCertChainSize = len(self.chain)
        return cert
