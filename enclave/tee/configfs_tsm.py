"""SEV-SNP and TDX evidence through the Linux configfs-tsm report interface (kernel >= 6.7).

Documentation/ABI/testing/configfs-tsm: a process makes an entry under the report root
(`/sys/kernel/config/tsm/report`), writes up to 64 bytes to `inblob` (we always write exactly
64), optionally `privlevel` (the SEV-SNP VMPL), and reads `outblob` (the SNP report or the TDX
quote), `auxblob` (SNP: the host's certificate table) and `provider` (`sev_guest`, `tdx_guest`).
`generation` counts writes to the entry; if it moved by more than our own writes, another process
wrote to the entry between our write and our read and the outblob may answer someone else's
inblob, so we start over with a fresh entry. The entry is removed whatever happens.

All file operations go through `TsmFs`, so tests can run the attester against a fake configfs
that answers with real evidence bytes.
"""

from __future__ import annotations

import errno
import os
import secrets
import struct
from dataclasses import dataclass
from typing import Protocol

from enclave.tee import REPORT_DATA_LEN, AttestationError
from enclave.tee.snp_certs import parse_cert_table
from verifier.errors import ParseError
from verifier.models import Evidence

DEFAULT_TSM_ROOT = "/sys/kernel/config/tsm/report"
PROVIDERS = {"sev_guest": "sev-snp", "tdx_guest": "tdx"}
SNP_REPORT_LEN = 0x4A0  # 1184 bytes for report versions 2, 3 and 5
TDX_HEADER_LEN = 48
TDX_TEE_TYPE = 0x81
_RETRYABLE = (errno.EBUSY, errno.EAGAIN, errno.EINTR)


class TsmFs(Protocol):
    """The file operations the attester needs; `OsFs` is the real one."""

    def mkdir(self, path: str) -> None: ...
    def rmdir(self, path: str) -> None: ...
    def read(self, path: str) -> bytes: ...
    def write(self, path: str, data: bytes) -> int: ...


class OsFs:
    """configfs through plain system calls; a write is one call, as configfs takes a value whole."""

    def mkdir(self, path: str) -> None:
        os.mkdir(path)

    def rmdir(self, path: str) -> None:
        os.rmdir(path)

    def read(self, path: str) -> bytes:
        # configfs binary attributes are produced whole on the first read; read to EOF.
        fd = os.open(path, os.O_RDONLY)
        try:
            chunks = []
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def write(self, path: str, data: bytes) -> int:
        fd = os.open(path, os.O_WRONLY)
        try:
            return os.write(fd, data)
        finally:
            os.close(fd)


@dataclass(frozen=True)
class TsmReport:
    provider: str
    outblob: bytes
    auxblob: bytes


def _oserror(action: str, path: str, exc: OSError) -> AttestationError:
    hint = ""
    if exc.errno in (errno.EACCES, errno.EPERM):
        hint = " (configfs-tsm needs root / CAP_SYS_ADMIN)"
    elif exc.errno == errno.ENXIO:
        hint = " (no TSM provider is registered: is the sev-guest or tdx-guest driver loaded?)"
    elif exc.errno == errno.ENOENT:
        hint = " (is configfs mounted at /sys/kernel/config and the kernel >= 6.7?)"
    return AttestationError(f"configfs-tsm: cannot {action} {path}: {exc.strerror or exc}{hint}")


class TsmReportClient:
    """One report request at a time through a configfs-tsm report root."""

    def __init__(self, root: str = DEFAULT_TSM_ROOT, fs: TsmFs | None = None, retries: int = 3) -> None:
        self.root = root
        self.fs = fs or OsFs()
        self.retries = max(1, retries)

    def _new_entry(self) -> str:
        entry = os.path.join(self.root, f"aaudit-{os.getpid()}-{secrets.token_hex(6)}")
        try:
            self.fs.mkdir(entry)
        except OSError as exc:
            raise _oserror("create", entry, exc) from None
        return entry

    def _remove(self, entry: str) -> None:
        try:
            self.fs.rmdir(entry)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _oserror("remove", entry, exc) from None

    def _read(self, entry: str, name: str, missing_ok: bool = False) -> bytes:
        path = os.path.join(entry, name)
        try:
            return self.fs.read(path)
        except FileNotFoundError as exc:
            if missing_ok:
                return b""
            raise _oserror("read", path, exc) from None
        except OSError as exc:
            if exc.errno in _RETRYABLE:
                raise _Retry(f"reading {path}: {exc.strerror}") from None
            raise _oserror("read", path, exc) from None

    def _write(self, entry: str, name: str, data: bytes) -> None:
        path = os.path.join(entry, name)
        try:
            n = self.fs.write(path, data)
        except OSError as exc:
            if exc.errno in _RETRYABLE:
                raise _Retry(f"writing {path}: {exc.strerror}") from None
            raise _oserror("write", path, exc) from None
        if n != len(data):
            raise AttestationError(f"configfs-tsm: short write to {path}: {n} of {len(data)} bytes")

    def _generation(self, entry: str) -> int:
        raw = self._read(entry, "generation")
        try:
            return int(raw.decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            raise AttestationError(f"configfs-tsm: {entry}/generation is not a number: {raw[:32]!r}") from None

    def provider(self) -> str:
        """The registered provider's name (`sev_guest`, `tdx_guest`), read from a scratch entry."""
        entry = self._new_entry()
        try:
            return self._read(entry, "provider").decode("ascii", "replace").strip()
        except _Retry as r:
            raise AttestationError(f"configfs-tsm: {r}") from None
        finally:
            self._remove(entry)

    def report(self, inblob: bytes, privlevel: int | None = None, want_aux: bool = False) -> TsmReport:
        """Write `inblob` (and `privlevel`) to a fresh entry and read the report it produces."""
        last = ""
        for _ in range(self.retries):
            entry = self._new_entry()
            try:
                return self._attempt(entry, inblob, privlevel, want_aux)
            except _Retry as r:
                last = str(r)
            finally:
                self._remove(entry)
        raise AttestationError(f"configfs-tsm: gave up after {self.retries} attempts; last: {last}")

    def _attempt(self, entry: str, inblob: bytes, privlevel: int | None, want_aux: bool) -> TsmReport:
        start = self._generation(entry)
        writes = 0
        if privlevel is not None:
            self._write(entry, "privlevel", str(privlevel).encode())
            writes += 1
        self._write(entry, "inblob", inblob)
        writes += 1
        outblob = self._read(entry, "outblob")
        # TDX entries have no auxblob attribute; an SNP host may supply no certificates.
        auxblob = self._read(entry, "auxblob", missing_ok=True) if want_aux else b""
        provider = self._read(entry, "provider").decode("ascii", "replace").strip()
        end = self._generation(entry)
        if end != start + writes:
            raise _Retry(f"generation went from {start} to {end} across our {writes} write(s): "
                         "another process wrote to the report entry")
        return TsmReport(provider, outblob, auxblob)


class _Retry(AttestationError):
    """A transient condition (concurrent writer, busy firmware): `report` tries again with a fresh
    entry, and says so in the AttestationError it raises once the attempts run out."""


def check_snp_report(outblob: bytes) -> None:
    """Refuse an outblob that cannot be an SEV-SNP report; the verifier does the real parsing."""
    if len(outblob) != SNP_REPORT_LEN:
        raise AttestationError(f"SEV-SNP report is {len(outblob)} bytes, expected {SNP_REPORT_LEN}")
    version = struct.unpack_from("<I", outblob, 0)[0]
    if version < 2:
        raise AttestationError(f"SEV-SNP report version {version} is not an SNP report (expected >= 2)")


def check_tdx_quote(outblob: bytes) -> None:
    if len(outblob) < TDX_HEADER_LEN:
        raise AttestationError(f"TDX quote is {len(outblob)} bytes, shorter than its {TDX_HEADER_LEN}-byte header")
    version, _key_type, tee_type = struct.unpack_from("<HHI", outblob, 0)
    if version not in (4, 5):
        raise AttestationError(f"TDX quote version {version} is not supported (expected 4 or 5)")
    if tee_type != TDX_TEE_TYPE:
        raise AttestationError(f"quote TEE type 0x{tee_type:x} is not TDX (0x81)")


class ConfigfsTsmAttester:
    """SEV-SNP (`platform="sev-snp"`) or TDX (`platform="tdx"`) evidence via configfs-tsm.

    The provider the kernel reports must match the platform asked for, so a TDX guest can never
    hand out a quote labelled SEV-SNP (or the reverse).
    """

    def __init__(self, platform: str, root: str = DEFAULT_TSM_ROOT, *, privlevel: int | None = None,
                 fs: TsmFs | None = None, retries: int = 3) -> None:
        if platform not in ("sev-snp", "tdx"):
            raise ValueError(f"configfs-tsm serves sev-snp and tdx, not {platform!r}")
        if privlevel is not None and not 0 <= privlevel <= 3:
            raise ValueError(f"privlevel must be 0..3, got {privlevel}")
        self.platform = platform
        self.privlevel = privlevel
        self.client = TsmReportClient(root, fs, retries)

    def attest(self, report_data: bytes) -> Evidence:
        if len(report_data) != REPORT_DATA_LEN:
            raise ValueError(f"report data must be {REPORT_DATA_LEN} bytes, got {len(report_data)}")
        rep = self.client.report(report_data, self.privlevel, want_aux=self.platform == "sev-snp")
        got = PROVIDERS.get(rep.provider)
        if got != self.platform:
            raise AttestationError(f"configfs-tsm provider is {rep.provider!r}, which does not produce "
                                   f"{self.platform} evidence")
        if self.platform == "tdx":
            check_tdx_quote(rep.outblob)
            return Evidence("tdx", rep.outblob)
        check_snp_report(rep.outblob)
        try:
            certs = parse_cert_table(rep.auxblob)
        except ParseError as exc:
            raise AttestationError(f"host-supplied SEV-SNP {exc}") from None
        return Evidence("sev-snp", rep.outblob, certs=tuple(c.der for c in certs))
