"""A bounds-checked little-endian cursor for binary evidence (TDX quotes, NVIDIA SPDM reports).

Every read names its field, so a truncated or lying length field is reported as where it ran out,
never as an IndexError or a short slice read as if it were whole.
"""

from __future__ import annotations

from verifier.errors import ParseError


class Reader:
    def __init__(self, data: bytes, what: str) -> None:
        self.data, self.pos, self.what = data, 0, what

    def take(self, n: int, field: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ParseError(f"{self.what} truncated in {field}: needs {n} byte(s) at offset {self.pos}, "
                             f"{len(self.data) - self.pos} left")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def uint(self, n: int, field: str) -> int:
        return int.from_bytes(self.take(n, field), "little")

    def u8(self, field: str) -> int:
        return self.uint(1, field)

    def u16(self, field: str) -> int:
        return self.uint(2, field)

    def u32(self, field: str) -> int:
        return self.uint(4, field)
