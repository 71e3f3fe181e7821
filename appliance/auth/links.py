"""Query links (spec §12): the self-contained, encrypted and authenticated link parameters.

A link carries its whole request (bucket, query, record identity, expiry) in ``ct``: the JSON,
zlib-compressed, sealed with AES-SIV (the scheme ReductStore uses) under a key derived (HKDF-
SHA256, salt ``s``) from the issuing token's *stored* secret; ``i`` names the token, ``n`` is a
random nonce. Nothing is stored on the server. Consequences an operator can rely on:

* changing a byte of ``ct``, ``s``, ``n`` or ``i`` makes decryption fail (422);
* removing or rotating the issuing token changes/loses the secret: its links stop working;
* with authentication disabled the secret is empty, as in ReductStore (anyone can read anyway).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import zlib
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from appliance.errors import UnprocessableEntity

__all__ = ["open_link", "seal_link"]

_INFO = b"reduct-appliance query link v1"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str, param: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise UnprocessableEntity(f"Invalid base64 in '{param}' parameter: {exc}") from None


def _cipher(secret: bytes, salt: bytes) -> AESSIV:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=_INFO).derive(secret)
    return AESSIV(key)


def seal_link(payload: dict[str, Any], issuer: str, secret: bytes) -> dict[str, str]:
    """The ``ct``, ``s``, ``i``, ``n`` query parameters of a link carrying ``payload``."""
    salt, nonce = os.urandom(16), os.urandom(16)
    plain = zlib.compress(json.dumps(payload, separators=(",", ":")).encode())
    sealed = _cipher(secret, salt).encrypt(plain, [issuer.encode(), nonce])
    return {"ct": _b64(sealed), "s": _b64(salt), "i": issuer, "n": _b64(nonce)}


def link_issuer(params: Any) -> str:
    """The issuing token's name (``i``); 422 if a parameter is missing."""
    for name in ("ct", "s", "n", "i"):
        if not params.get(name):
            raise UnprocessableEntity(f"Missing '{name}' parameter")
    return str(params["i"])


def open_link(params: Any, secret: bytes) -> dict[str, Any]:
    """The payload of a link (422 with ReductStore's messages if it cannot be opened)."""
    issuer = link_issuer(params)
    sealed = _unb64(params["ct"], "ct")
    salt = _unb64(params["s"], "s")
    nonce = _unb64(params["n"], "n")
    try:
        plain = _cipher(secret, salt).decrypt(sealed, [issuer.encode(), nonce])
    except (InvalidTag, ValueError):
        raise UnprocessableEntity("Failed to decrypt query: aead::Error") from None
    try:
        payload = json.loads(zlib.decompress(plain))
    except (zlib.error, ValueError) as exc:
        raise UnprocessableEntity(f"Failed to parse query: {exc}") from None
    if not isinstance(payload, dict):
        raise UnprocessableEntity("Failed to parse query: not an object")
    return payload
