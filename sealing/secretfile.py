"""Key files: created private from the first byte, and refused when others could read them.

`os.open(O_CREAT | O_EXCL, 0o600)` makes the file with its final mode (the umask can only remove
bits), so no other user can ever read it, not even between creation and a later chmod; O_EXCL also
means an existing key is never overwritten. Loading refuses group/other access the way ssh does,
because a key that others could have read is not a secret any more.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from sealing.errors import SealError

_PUBLIC_PEM = b"-----BEGIN PUBLIC KEY-----"


def write_secret_file(path: Path, data: bytes) -> None:
    """Create `path` with mode 0600 and write `data`; refuse if it already exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise SealError(f"{path} already exists; refusing to overwrite a secret file (remove it or choose another path)") from None
    except OSError as exc:
        raise SealError(f"cannot create {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise SealError(f"cannot write {path}: {exc.strerror}") from None


def read_secret_file(path: Path, max_size: int) -> bytes:
    """Read a key file that only its owner can access; at most `max_size` bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise SealError(f"cannot open key file {path}: {exc.strerror}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):  # checked before fdopen, which refuses a folder with its own error
        os.close(fd)
        raise SealError(f"key file {path} is not a regular file")
    with os.fdopen(fd, "rb") as handle:
        if path.suffix == ".pub" or handle.read(len(_PUBLIC_PEM)) == _PUBLIC_PEM:
            # Checked first: a .pub file is world-readable by design, and "chmod 600" would be wrong advice.
            private = path.with_suffix(".key") if path.suffix == ".pub" else "the matching .key file"
            raise SealError(f"{path} is a public key (the .pub file `aaudit keygen` writes for the other party); "
                            f"pass your private key file instead ({private})")
        handle.seek(0)
        if info.st_mode & 0o077:
            raise SealError(
                f"key file {path} is accessible by other users (mode {stat.S_IMODE(info.st_mode):04o}); "
                f"run `chmod 600 {path}` if it was never exposed, otherwise make a new key"
            )
        if info.st_size > max_size:
            raise SealError(f"key file {path} is {info.st_size} bytes; expected at most {max_size}")
        return handle.read(max_size + 1)
