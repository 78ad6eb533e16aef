"""
Secrets: device tokens and API keys.

Both are long random secrets that dashd shows once and keeps only as a
SHA-256 hash. Each starts with the (non-secret) ID of its record, so that
checking one is a lookup by ID followed by a constant-time comparison of
hashes. A fast hash is enough here, unlike for passwords: with 256 random
bits there is nothing to brute-force.

- device token: ``DEVICEID-SECRET``, e.g. ``d3k9x0a7mq2zt-9f0c...``.
  Mongoose OS builds the ``src`` of every frame from the part of the token
  before the first dash, so that part is the device ID, never the secret.
- API key: ``KEYID.SECRET``, e.g. ``k81hd0s9d7a2m.Qm9v...``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string

_ID_ALPHABET = string.ascii_lowercase + string.digits
_ID_LENGTH = 12
_DEVICE_TOKEN = re.compile(r"^(d[a-z0-9]{%d})-([0-9a-f]{64})$" % _ID_LENGTH)
_API_KEY = re.compile(r"^(k[a-z0-9]{%d})\.([A-Za-z0-9_-]{43})$" % _ID_LENGTH)


_ID_SPACE = len(_ID_ALPHABET) ** _ID_LENGTH  # about 2^62


def new_id(prefix: str) -> str:
    """A random identifier such as ``d3k9x0a7mq2zt``; not a secret."""
    # One read of the system's random source (not one per character: a job
    # makes thousands of call IDs in one transaction); 64 bits reduced to
    # the ID's ~62 (the modulo makes some IDs a little likelier than
    # others: no matter for an identifier, which is not a secret).
    n = int.from_bytes(secrets.token_bytes(8), "big") % _ID_SPACE
    chars = []
    for _ in range(_ID_LENGTH):
        n, digit = divmod(n, len(_ID_ALPHABET))
        chars.append(_ID_ALPHABET[digit])
    return prefix + "".join(chars)


def new_device_token(device_id: str) -> str:
    return "%s-%s" % (device_id, secrets.token_hex(32))


def new_api_key(key_id: str) -> str:
    return "%s.%s" % (key_id, secrets.token_urlsafe(32))


def device_id_of(token: str) -> str | None:
    """The device a well-formed token names, or None."""
    m = _DEVICE_TOKEN.match(token)
    return m.group(1) if m else None


def key_id_of(secret: str) -> str | None:
    """The key a well-formed API key names, or None."""
    m = _API_KEY.match(secret)
    return m.group(1) if m else None


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def matches(secret: str, stored_hash: str) -> bool:
    """Constant-time check of a secret against its stored hash."""
    return hmac.compare_digest(hash_secret(secret).encode("ascii"), stored_hash.encode("ascii"))
