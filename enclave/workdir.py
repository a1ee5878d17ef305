"""Where decrypted model files live while a job runs: a private folder on a RAM-backed filesystem.

transformers loads a model from a folder, so the plaintext must sit in some filesystem; this makes
sure it is tmpfs/ramfs (inside a TEE, encrypted guest memory), never persistent disk, and that the
folder is removed when the job ends.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from verifier.errors import UnusableInput

RAM_FILESYSTEMS = ("tmpfs", "ramfs")
DEFAULT_BASE = Path("/dev/shm")


def filesystem_of(path: Path) -> str:
    """The filesystem type of the mount holding `path` (longest mount-point prefix in /proc/mounts)."""
    path = path.resolve()
    best, fstype = "", "unknown"
    try:
        with open("/proc/mounts", encoding="utf-8") as mounts:
            for line in mounts:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mount = parts[1].replace("\\040", " ")
                if (str(path) == mount or str(path).startswith(mount.rstrip("/") + "/")) and len(mount) > len(best):
                    best, fstype = mount, parts[2]
    except OSError:
        pass
    return fstype


def make_workdir(base: Path | None = None, *, unsafe_allow_disk: bool = False) -> Path:
    base = base or DEFAULT_BASE
    if not base.is_dir():
        raise UnusableInput(f"work folder base {base} does not exist")
    fstype = filesystem_of(base)
    if fstype not in RAM_FILESYSTEMS and not unsafe_allow_disk:
        raise UnusableInput(
            f"work folder base {base} is on {fstype}, not tmpfs: decrypted weights must never reach persistent "
            "disk. Give --workdir on a tmpfs, or --unsafe-allow-disk-workdir for development only."
        )
    sweep_stale(base)
    return Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=base))  # mode 0700


PREFIX = "aaudit-job-"


def sweep_stale(base: Path) -> list[Path]:
    """Wipe work folders left by enclave processes that are gone (killed mid-job: `kill -9`, power
    loss of a VM with persistent tmpfs). A folder is named after its owner's pid; one whose pid is
    alive belongs to a running enclave and is left alone."""
    swept = []
    for folder in base.glob(f"{PREFIX}*"):
        pid_text = folder.name[len(PREFIX):].split("-", 1)[0]
        if pid_text.isdigit() and _alive(int(pid_text)):
            continue
        if folder.is_dir() and not folder.is_symlink():
            wipe(folder)
            swept.append(folder)
            logging.getLogger("aaudit.enclave").warning("wiped a stale work folder left by a stopped enclave: %s",
                                                        folder)
    return swept


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def wipe(path: Path) -> None:
    """Remove a work folder; file contents are overwritten first when cheap (small files)."""
    if not path.exists():
        return
    for root, _dirs, files in os.walk(path):
        for name in files:
            p = Path(root, name)
            try:
                size = p.stat().st_size
                if size <= 64 << 20:
                    with open(p, "r+b") as f:
                        f.write(b"\x00" * size)
            except OSError:
                pass
    shutil.rmtree(path, ignore_errors=True)
