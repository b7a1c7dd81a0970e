"""Password hashes: checking a stored one, and making new ones.

New hashes are argon2id with OWASP's minimum parameters (19 MiB, 2 passes,
1 lane): tens of milliseconds here, and one lane means no threads and a
small address space under softlimit.  Every other scheme an old table may
hold (bcrypt, SHA-512/256 crypt, MD5 crypt, DES crypt, and plaintext where
the admin allows it) is checked for existing rows and marked for
replacement after a successful login.

The hot path pays only for what the stored hash needs: argon2 goes straight
to libargon2 through argon2-cffi's bindings (under 1 ms to load, where the
argon2 package, or passlib's context with all its handlers, costs 25-50 ms
of imports); a legacy hash loads just its own passlib handler.  passlib's
CryptContext remains for the admin tool (`context()`).

Timing: a check that cannot succeed (unknown or undecodable name, a
disabled marker, a hash we cannot read) verifies against DUMMY_HASH, a
fixed argon2id hash with the current parameters, so it costs what a wrong
password costs on an up-to-date row.
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from passlib.context import CryptContext

ARGON2_MEMORY_KIB = 19456
ARGON2_PASSES = 2
ARGON2_LANES = 1
SALT_BYTES = 16
HASH_BYTES = 32
CURRENT = f"$argon2id$v=19$m={ARGON2_MEMORY_KIB},t={ARGON2_PASSES},p={ARGON2_LANES}$"

# argon2id of 32 random bytes nobody kept, made with the parameters above
# (tests/test_passwords.py checks that they agree).
DUMMY_HASH = (CURRENT + "6NYohj7/E6fSxa7cpyA1lg$X2SoQiY1H8k6rnyqvnFHj5Q1oeid80nc5500l/+masQ")

# Rows that say "no password can match": empty, "*" (BSD, and the 2002
# article's lock), "!" and "!<hash>" (Linux's passwd -l): passlib's
# unix_disabled rule.  They never verify, whatever else is allowed.
DISABLED_MARKERS = ("*", "!")

# Legacy crypt(3) schemes by prefix: (passlib module, handler).
_LEGACY = {
    "$2": ("passlib.handlers.bcrypt", "bcrypt"),
    "$6$": ("passlib.handlers.sha2_crypt", "sha512_crypt"),
    "$5$": ("passlib.handlers.sha2_crypt", "sha256_crypt"),
    "$1$": ("passlib.handlers.md5_crypt", "md5_crypt"),
}
_DES = ("passlib.handlers.des_crypt", "des_crypt")
_DES_CHARS = frozenset("./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
BCRYPT_MAX = 72  # bytes crypt_blowfish reads; the rest was always ignored


def is_disabled(stored: str) -> bool:
    return not stored or stored.startswith(DISABLED_MARKERS)


def check(password: bytes, stored: str, plaintext: bool = False) -> tuple[bool, bool]:
    """(right, wants a new hash) for `password` against the row's `stored` hash.

    Always costs at least one argon2id verify at the current parameters.
    A password with a NUL never matches (crypt(3) cannot take one).
    """
    if b"\0" in password or is_disabled(stored):
        return _dummy(password)
    if stored.startswith("$argon2"):
        return _argon2_verify(password, stored), not stored.startswith(CURRENT)
    handler = _legacy_handler(stored)
    if handler is not None:
        if handler.name == "bcrypt":
            password = password[:BCRYPT_MAX]  # as the systems that made these did
        try:
            ok = bool(handler.verify(password, stored))
        except (ValueError, TypeError):  # malformed hash
            return _dummy(password)
        return ok, ok
    if plaintext and not stored.startswith("$"):
        import hmac  # (3 ms: hashlib and OpenSSL, so only here)

        _dummy(password)  # a plaintext row costs what a hashed one does
        ok = hmac.compare_digest(password, stored.encode("utf-8"))
        return ok, ok
    return _dummy(password)


def stored_plaintext(stored: str, plaintext: bool) -> bytes | None:
    """The password itself, where `stored` holds it in plaintext and `plaintext`
    (authplaintext) lets rows do that, as check() reads rows; else None.  APOP
    needs it: its digest can only be checked against the password."""
    if not plaintext or is_disabled(stored) or stored.startswith("$") \
            or _legacy_location(stored) is not None:
        return None
    return stored.encode("utf-8")


def new_hash(password: bytes) -> str:
    """A fresh argon2id hash with the current parameters."""
    import posix

    from _argon2_cffi_bindings import ffi, lib

    salt = posix.urandom(SALT_BYTES)
    size = lib.argon2_encodedlen(ARGON2_PASSES, ARGON2_MEMORY_KIB, ARGON2_LANES,
                                 SALT_BYTES, HASH_BYTES, lib.Argon2_id) + 1
    out = ffi.new("char[]", size)
    result = lib.argon2_hash(ARGON2_PASSES, ARGON2_MEMORY_KIB, ARGON2_LANES,
                             ffi.from_buffer(password), len(password),
                             ffi.from_buffer(salt), SALT_BYTES, ffi.NULL, HASH_BYTES,
                             out, size, lib.Argon2_id, lib.ARGON2_VERSION_NUMBER)
    if result != lib.ARGON2_OK:
        raise MemoryError(ffi.string(lib.argon2_error_message(result)).decode())
    return ffi.string(out).decode("ascii")


def _argon2_verify(password: bytes, stored: str) -> bool:
    from _argon2_cffi_bindings import ffi, lib

    kinds = {"$argon2id$": lib.Argon2_id, "$argon2i$": lib.Argon2_i, "$argon2d$": lib.Argon2_d}
    kind = next((k for prefix, k in kinds.items() if stored.startswith(prefix)), None)
    if kind is None:
        return _dummy(password)[0]
    result = lib.argon2_verify(ffi.new("char[]", stored.encode("ascii", "replace")),
                               ffi.from_buffer(password), len(password), kind)
    if result == lib.ARGON2_MEMORY_ALLOCATION_ERROR:
        raise MemoryError("argon2: cannot allocate its memory (softlimit too low?)")
    return result == lib.ARGON2_OK


def _dummy(password: bytes) -> tuple[bool, bool]:
    _argon2_verify(password, DUMMY_HASH)
    return False, False


def _legacy_location(stored: str) -> "tuple[str, str] | None":
    """(module, class) of the passlib handler for a crypt(3) hash; None if not one."""
    where = next((v for prefix, v in _LEGACY.items() if stored.startswith(prefix)), None)
    if where is None and len(stored) == 13 and _DES_CHARS.issuperset(stored):
        where = _DES
    return where


def _legacy_handler(stored: str) -> "Any":
    """The passlib handler class for a crypt(3) hash, loaded alone; None if not one."""
    where = _legacy_location(stored)
    if where is None:
        return None
    module = __import__(where[0], fromlist=[where[1]])
    return getattr(module, where[1])


def scheme(stored: str) -> str:
    """A stored hash's scheme for the log: `argon2id m=19456,t=2,p=1`,
    `md5_crypt`, `plaintext`...; never any part of the hash itself."""
    if stored.startswith("$argon2"):
        fields = stored.split("$")
        cost = next((f for f in fields if f.startswith("m=")), "")
        return f"{fields[1]} {cost}".strip()
    handler = _legacy_handler(stored)
    if handler is not None:
        return str(handler.name)
    return "disabled" if is_disabled(stored) else "plaintext"


VERIFIED_SCHEMES = ["argon2", "bcrypt", "sha512_crypt", "sha256_crypt", "md5_crypt", "des_crypt"]


def context(plaintext: bool = False) -> "CryptContext":
    """passlib's view of the same policy, for the admin tool: it names and
    hashes schemes the way check() treats them."""
    from passlib.context import CryptContext

    schemes = ["unix_disabled"] + VERIFIED_SCHEMES + (["plaintext"] if plaintext else [])
    return CryptContext(
        schemes=schemes, default="argon2", deprecated="auto",
        argon2__type="ID", argon2__memory_cost=ARGON2_MEMORY_KIB,
        argon2__rounds=ARGON2_PASSES, argon2__parallelism=ARGON2_LANES,
    )
