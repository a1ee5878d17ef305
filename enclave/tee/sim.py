"""The simulated attester: evidence signed by a key made at boot. Development, tests and the demo only.

It binds report data exactly like hardware would, so the whole protocol runs for real; only the
root of trust is missing, which the evidence and every verdict say loudly.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime, timezone

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from enclave.tee import REPORT_DATA_LEN
from verifier.models import Evidence
from verifier.platforms.sim import FORMAT, WARNING


class SimAttester:
    platform = "sim"

    def __init__(self, measurement: str, debug: bool = False) -> None:
        self._key = Ed25519PrivateKey.generate()
        self._measurement = measurement
        self._debug = debug

    def attest(self, report_data: bytes) -> Evidence:
        if len(report_data) != REPORT_DATA_LEN:
            raise ValueError(f"report data must be {REPORT_DATA_LEN} bytes, got {len(report_data)}")
        payload = json.dumps({
            "format": FORMAT,
            "simulated": True,
            "warning": WARNING,
            "measurement": self._measurement,
            "report_data": report_data.hex(),
            "debug": self._debug,
            "issued_at": datetime.now(timezone.utc).isoformat(),
            "public_key": base64.b64encode(
                self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode(),
        }, sort_keys=True, separators=(",", ":")).encode()
        blob = json.dumps({"payload": base64.b64encode(payload).decode(),
                           "signature": base64.b64encode(self._key.sign(payload)).decode()}).encode()
        return Evidence("sim", blob)
