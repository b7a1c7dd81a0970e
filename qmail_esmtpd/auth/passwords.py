"""Password hashing policy, shared by the server and `qmail-esmtpd-user`.

New hashes are argon2id with OWASP's minimum parameters (19 MiB, 2 passes,
1 lane): tens of milliseconds here, so an AUTH session stays well under a
second, and one lane keeps the memory small under softlimit.  Every other
scheme is accepted for existing rows and marked deprecated, so a successful
login can replace it (where the database role may).  Imported only when a
password is checked: passlib's import alone costs more than a whole plain
SMTP session.
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    from passlib.context import CryptContext

VERIFIED_SCHEMES = ["argon2", "bcrypt", "sha512_crypt", "sha256_crypt", "md5_crypt", "des_crypt"]
ARGON2_MEMORY_KIB = 19456
ARGON2_PASSES = 2
ARGON2_LANES = 1


def context(plaintext: bool = False) -> "CryptContext":
    """The CryptContext; `plaintext` also accepts unhashed rows (to migrate them)."""
    from passlib.context import CryptContext

    schemes = VERIFIED_SCHEMES + (["plaintext"] if plaintext else [])
    return CryptContext(
        schemes=schemes, default="argon2", deprecated="auto",
        argon2__type="ID", argon2__memory_cost=ARGON2_MEMORY_KIB,
        argon2__rounds=ARGON2_PASSES, argon2__parallelism=ARGON2_LANES,
    )
