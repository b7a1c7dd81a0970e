"""Lookups in D. J. Bernstein's constant databases: morercpthosts.cdb,
users/cdb, tcp.smtp.cdb.

Our own few lines rather than a package: a lookup is two or three preads,
and a library's imports (struct, mmap, itertools) would cost a session more
than its recipient checks.  Imports nothing but posix.
"""

import posix

HEADER = 2048  # 256 (position, slots) pairs of 32-bit little-endian numbers


class CdbError(Exception):
    """The file is shorter than its own pointers say: cut off or garbled."""


def prefix_hashes(key: "bytes | memoryview") -> list[int]:
    """cdb's hash of key[:i] for every i from 0 to len(key), in one pass:
    h = 5381; h = (h * 33) ^ byte, in 32 bits."""
    h = 5381
    hashes = [h]
    for byte in key:
        h = ((h * 33) & 0xFFFFFFFF) ^ byte
        hashes.append(h)
    return hashes


def cdb_hash(key: "bytes | memoryview") -> int:
    """cdb's hash of the whole key."""
    return prefix_hashes(key)[-1]


class Cdb:
    """One open cdb file; `get(key)` is the first record's data, or None."""

    def __init__(self, path: "bytes | str") -> None:
        self.fd = posix.open(path, posix.O_RDONLY | posix.O_CLOEXEC)

    def _read(self, length: int, offset: int) -> bytes:
        data = posix.pread(self.fd, length, offset)
        if len(data) != length:
            raise CdbError(f"{length} bytes wanted at {offset}, {len(data)} there")
        return data

    def get(self, key: "bytes | memoryview", h: int | None = None) -> bytes | None:
        """The data of the first record under `key`; None when there is none.
        `h`: the key's hash, when the caller has it (prefix_hashes()).
        Raises CdbError (a damaged file) or OSError.

        Each (position, length) pair is taken apart here rather than by a
        helper, and an empty key is not read: a session makes a dozen of
        these calls per recipient (an empty key, users/cdb's wildcards, is
        one of them)."""
        if h is None:
            h = cdb_hash(key)
        read, number = self._read, int.from_bytes
        pair = read(8, (h & 0xFF) * 8)
        slots = number(pair[4:], "little")
        if slots == 0:
            return None
        table, length = number(pair[:4], "little"), len(key)
        slot = (h >> 8) % slots
        for _ in range(slots):
            pair = read(8, table + slot * 8)
            record = number(pair[4:], "little")
            if record == 0:
                return None
            if number(pair[:4], "little") == h:
                pair = read(8, record)
                if number(pair[:4], "little") == length and (
                        length == 0 or read(length, record + 8) == key):
                    return read(number(pair[4:], "little"), record + 8 + length)
            slot = (slot + 1) % slots
        return None

    def close(self) -> None:
        posix.close(self.fd)


class CdbInMemory(Cdb):
    """A cdb already read whole (the warm server keeps tcp.smtp.cdb so)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        if len(data) < HEADER:
            raise CdbError(f"{len(data)} bytes: shorter than a cdb header")

    def _read(self, length: int, offset: int) -> bytes:
        data = self.data[offset:offset + length]
        if len(data) != length:
            raise CdbError(f"{length} bytes wanted at {offset}, {len(data)} there")
        return data

    def close(self) -> None:
        self.data = b""
