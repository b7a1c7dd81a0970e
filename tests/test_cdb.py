"""qmail_esmtpd/cdb.py against cdb files written by another implementation
(pure-cdb's Writer) and by ucspi-tcp's tcprules."""

import os
import random
import shutil
import subprocess
from pathlib import Path

import cdblib
import pytest

from qmail_esmtpd.cdb import Cdb, CdbError, CdbInMemory, cdb_hash


def write(path: Path, records: list[tuple[bytes, bytes]]) -> None:
    with open(path, "wb") as f, cdblib.Writer(f) as writer:
        for key, data in records:
            writer.put(key, data)


def test_hash_is_cdbs():
    for key in (b"", b"a", b"example.com", bytes(range(256))):
        assert cdb_hash(key) == cdblib.djb_hash(key)


def test_every_key_found_and_absent_keys_not(tmp_path: Path):
    rng = random.Random(7)
    records = [(rng.randbytes(rng.randint(0, 24)), rng.randbytes(rng.randint(0, 64)))
               for _ in range(3000)]
    path = tmp_path / "big.cdb"
    write(path, records)
    first: dict[bytes, bytes] = {}
    for key, data in records:
        first.setdefault(key, data)
    cdb = Cdb(path)
    try:
        for key, data in first.items():
            assert cdb.get(key) == data  # the first record of a key, as cdb_seek finds it
        for _ in range(2000):
            key = rng.randbytes(9)
            assert cdb.get(key) == first.get(key)
    finally:
        cdb.close()


def test_empty_database_and_empty_values(tmp_path: Path):
    write(tmp_path / "empty.cdb", [])
    write(tmp_path / "values.cdb", [(b"example.com", b""), (b"", b"wild")])
    assert Cdb(tmp_path / "empty.cdb").get(b"x") is None
    values = Cdb(tmp_path / "values.cdb")
    assert values.get(b"example.com") == b"" and values.get(b"") == b"wild"


def test_a_cut_file_is_an_error_not_an_answer(tmp_path: Path):
    path = tmp_path / "cut.cdb"
    write(path, [(b"key%d" % i, b"value") for i in range(100)])
    os.truncate(path, os.path.getsize(path) // 2)
    with pytest.raises(CdbError):
        for i in range(100):
            Cdb(path).get(b"key%d" % i)


@pytest.mark.skipif(shutil.which("tcprules") is None, reason="ucspi-tcp's tcprules")
def test_reads_what_tcprules_writes(tmp_path: Path):
    rules = b"127.0.0.1:allow,RELAYCLIENT=\"\"\n10.:deny\n:allow\n"
    subprocess.run(["tcprules", str(tmp_path / "r.cdb"), str(tmp_path / "r.tmp")],
                   input=rules, check=True)
    ours, theirs = Cdb(tmp_path / "r.cdb"), cdblib.Reader.from_file_path(str(tmp_path / "r.cdb"))
    assert ours.get(b"127.0.0.1") == b"+RELAYCLIENT=\0"
    for key in (b"127.0.0.1", b"10.", b"", b"192.0.2.1"):
        assert ours.get(key) == theirs.get(key)


def test_in_memory_reads_the_same(tmp_path: Path):
    path = tmp_path / "m.cdb"
    write(path, [(b"127.", b"+A=1\0"), (b"", b"D")])
    memory = CdbInMemory(path.read_bytes())
    assert memory.get(b"127.") == b"+A=1\0" and memory.get(b"") == b"D"
    assert memory.get(b"10.") is None
    with pytest.raises(CdbError):
        CdbInMemory(path.read_bytes()[:100])
    with pytest.raises(CdbError):
        CdbInMemory(path.read_bytes()[:2060]).get(b"127.")
