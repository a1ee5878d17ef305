"""Shared by the tlog tests: a real log served over gRPC on 127.0.0.1, and small bundles."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from tlog.client import LogClient
from tlog.log import SQLiteLog
from tlog.server import serve

ORIGIN = "test.example/log"


def bundle(n: int, payload: str = "") -> dict[str, Any]:
    """Any dict is a bundle to the log: the leaf is canonical JSON of it without logEntry."""
    return {"mediaType": "application/vnd.attestable-audits.bundle.v1+json", "run": n, "payload": payload}


@dataclass
class Running:
    log: SQLiteLog
    server: grpc.Server
    target: str
    client: LogClient

    @property
    def key(self) -> str:
        return self.log.signer.verifier_key


@contextlib.contextmanager
def running_log(db: Path, origin: str = ORIGIN) -> Iterator[Running]:
    log = SQLiteLog(db, origin=origin)
    server, port = serve(log, "127.0.0.1:0")
    target = f"127.0.0.1:{port}"
    client = LogClient(target, timeout=10)
    try:
        yield Running(log, server, target, client)
    finally:
        client.close()
        server.stop(grace=None).wait()
        log.close()
