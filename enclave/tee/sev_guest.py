"""SEV-SNP evidence through `/dev/sev-guest` ioctls: the fallback for kernels without configfs-tsm.

Layouts from include/uapi/linux/sev-guest.h:

    struct snp_report_req      { u8 user_data[64]; u32 vmpl; u8 rsvd[28]; }            96 bytes
    struct snp_report_resp     { u8 data[4000]; }
    struct snp_ext_report_req  { struct snp_report_req data; u64 certs_address; u32 certs_len; }
    struct snp_guest_request_ioctl { u8 msg_version; u64 req_data; u64 resp_data;
                                     u64 exitinfo2; /* fw_error: low 32 bits, vmm_error: high */ }
    SNP_GET_REPORT     = _IOWR('S', 0x0, struct snp_guest_request_ioctl)
    SNP_GET_EXT_REPORT = _IOWR('S', 0x2, struct snp_guest_request_ioctl)

The response buffer holds the firmware's MSG_REPORT_RSP (SEV-SNP ABI): u32 status, u32
report_size, 24 reserved bytes, then the report. The extended request also fills a page-aligned
buffer with the host's certificate table; if it is too small the kernel answers EIO with
vmm_error = 1 (INVALID_LEN) and the needed size in certs_len, and we ask once more.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
from typing import Any, Callable

from enclave.tee import REPORT_DATA_LEN, AttestationError
from enclave.tee.configfs_tsm import check_snp_report
from enclave.tee.snp_certs import parse_cert_table
from verifier.errors import ParseError
from verifier.models import Evidence

DEFAULT_DEVICE = "/dev/sev-guest"
PAGE = 4096
CERTS_START = 4 * PAGE  # SEV_FW_BLOB_MAX_SIZE in the kernel driver
CERTS_MAX = 64 * PAGE
RESP_LEN = 4000
RSP_HEADER_LEN = 32
VMM_ERR_INVALID_LEN = 1
VMM_ERR_BUSY = 2


class SnpReportReq(ctypes.Structure):
    _fields_ = [("user_data", ctypes.c_uint8 * 64), ("vmpl", ctypes.c_uint32), ("rsvd", ctypes.c_uint8 * 28)]


class SnpExtReportReq(ctypes.Structure):
    _fields_ = [("data", SnpReportReq), ("certs_address", ctypes.c_uint64), ("certs_len", ctypes.c_uint32)]


class SnpGuestRequestIoctl(ctypes.Structure):
    _fields_ = [("msg_version", ctypes.c_uint8), ("req_data", ctypes.c_uint64),
                ("resp_data", ctypes.c_uint64), ("exitinfo2", ctypes.c_uint64)]


def _iowr(kind: str, nr: int, size: int) -> int:
    return (3 << 30) | (size << 16) | (ord(kind) << 8) | nr


SNP_GET_REPORT = _iowr("S", 0x0, ctypes.sizeof(SnpGuestRequestIoctl))
SNP_GET_EXT_REPORT = _iowr("S", 0x2, ctypes.sizeof(SnpGuestRequestIoctl))

Ioctl = Callable[[int, int, Any], Any]


def _errors(io: SnpGuestRequestIoctl) -> str:
    fw, vmm = io.exitinfo2 & 0xFFFFFFFF, io.exitinfo2 >> 32
    return f"firmware error 0x{fw:x}, VMM error 0x{vmm:x}"


class SevGuestAttester:
    """SEV-SNP reports (and, with `extended`, the host's certificates) from the sev-guest device."""

    platform = "sev-snp"

    def __init__(self, device: str = DEFAULT_DEVICE, *, vmpl: int = 0, extended: bool = True,
                 ioctl: Ioctl = fcntl.ioctl) -> None:
        if not 0 <= vmpl <= 3:
            raise ValueError(f"vmpl must be 0..3, got {vmpl}")
        self.device = device
        self.vmpl = vmpl
        self.extended = extended
        self._ioctl = ioctl

    def attest(self, report_data: bytes) -> Evidence:
        if len(report_data) != REPORT_DATA_LEN:
            raise ValueError(f"report data must be {REPORT_DATA_LEN} bytes, got {len(report_data)}")
        try:
            fd = os.open(self.device, os.O_RDWR)
        except OSError as exc:
            raise AttestationError(f"cannot open {self.device}: {exc.strerror}") from None
        try:
            report, table = self._request(fd, report_data)
        finally:
            os.close(fd)
        check_snp_report(report)
        try:
            certs = parse_cert_table(table)
        except ParseError as exc:
            raise AttestationError(f"host-supplied SEV-SNP {exc}") from None
        return Evidence("sev-snp", report, certs=tuple(c.der for c in certs))

    def _request(self, fd: int, report_data: bytes) -> tuple[bytes, bytes]:
        req = SnpReportReq()
        ctypes.memmove(req.user_data, report_data, REPORT_DATA_LEN)
        req.vmpl = self.vmpl
        resp = (ctypes.c_uint8 * RESP_LEN)()
        if not self.extended:
            self._call(fd, SNP_GET_REPORT, "SNP_GET_REPORT", req, resp)
            return self._report(resp), b""
        size = CERTS_START
        while True:
            certs = (ctypes.c_uint8 * size)()
            ext = SnpExtReportReq(data=req, certs_address=ctypes.addressof(certs), certs_len=size)
            if self._call(fd, SNP_GET_EXT_REPORT, "SNP_GET_EXT_REPORT", ext, resp, allow_short_certs=True):
                return self._report(resp), bytes(certs)
            needed = ext.certs_len
            if needed <= size or needed > CERTS_MAX:
                raise AttestationError(f"SNP_GET_EXT_REPORT: host asks for a {needed}-byte certificate buffer "
                                       f"(had {size}, limit {CERTS_MAX})")
            size = -(-needed // PAGE) * PAGE

    def _call(self, fd: int, code: int, name: str, req: ctypes.Structure, resp: ctypes.Array,
              allow_short_certs: bool = False) -> bool:
        """Run one guest request; False when the certificate buffer was too small (caller grows it)."""
        io = SnpGuestRequestIoctl(msg_version=1, req_data=ctypes.addressof(req), resp_data=ctypes.addressof(resp))
        try:
            self._ioctl(fd, code, io)
        except OSError as exc:
            if allow_short_certs and exc.errno == errno.EIO and io.exitinfo2 >> 32 == VMM_ERR_INVALID_LEN:
                return False
            busy = " (host busy: try again)" if io.exitinfo2 >> 32 == VMM_ERR_BUSY else ""
            raise AttestationError(f"{name} on {self.device} failed: {exc.strerror}; {_errors(io)}{busy}") from None
        return True

    @staticmethod
    def _report(resp: ctypes.Array) -> bytes:
        raw = bytes(resp)
        status, size = struct.unpack_from("<II", raw, 0)
        if status != 0:
            raise AttestationError(f"SEV-SNP firmware answered MSG_REPORT_RSP status 0x{status:x}")
        if size > RESP_LEN - RSP_HEADER_LEN:
            raise AttestationError(f"MSG_REPORT_RSP claims a {size}-byte report, more than its "
                                   f"{RESP_LEN - RSP_HEADER_LEN}-byte buffer")
        return raw[RSP_HEADER_LEN:RSP_HEADER_LEN + size]
