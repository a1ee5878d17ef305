"""Regenerate the committed Python modules from protos/*.proto (`make protos`).

`python -m protos.generate [--out DIR]` writes into protos/ by default; the staleness test writes
into a temporary folder and compares.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def generate(out: Path) -> list[Path]:
    from grpc_tools import protoc  # dev dependency: only needed to regenerate
    import grpc_tools

    protos = sorted((ROOT / "protos").glob("*.proto"))
    include = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        for proto in protos:
            rc = protoc.main(["protoc", f"-I{ROOT}", f"-I{include}", f"--python_out={tmp}",
                              f"--grpc_python_out={tmp}", f"--pyi_out={tmp}", str(proto.relative_to(ROOT))])
            if rc != 0:
                raise SystemExit(f"protoc failed on {proto.name}")
        written = []
        for f in sorted((Path(tmp) / "protos").iterdir()):
            shutil.copyfile(f, out / f.name)
            written.append(out / f.name)
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=ROOT / "protos")
    args = ap.parse_args()
    for p in generate(args.out):
        print(p, file=sys.stderr)


if __name__ == "__main__":
    main()
