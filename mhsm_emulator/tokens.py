"""Access tokens the emulator's Entra endpoints mint and its data plane checks (RS256 JWTs, PyJWT).

The data plane accepts only tokens this emulator signed, for the Managed HSM audience, from its own
tenant, inside their lifetime; then it authorizes by the `oid` claim, as the service does.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from .keycrypto import b64url

RESOURCE = "https://managedhsm.azure.net"
ACCEPTED_AUDIENCES = (RESOURCE, RESOURCE + "/")


class TokenError(Exception):
    """Why a presented token is not acceptable; the text goes into the 401 message."""


class TokenAuthority:
    def __init__(self, key: rsa.RSAPrivateKey, tenant_id: str, lifetime: int) -> None:
        self._key = key
        self._public = key.public_key()
        self.tenant_id = tenant_id
        self.lifetime = lifetime
        numbers = self._public.public_numbers()
        self.kid = b64url(numbers.n.to_bytes(256, "big")[:20])
        self.issuer = f"https://sts.windows.net/{tenant_id}/"
        # Validated tokens, so the hot path pays for one RSA verify per token, not per request.
        self._valid: dict[str, dict[str, Any]] = {}

    def jwks(self) -> dict[str, Any]:
        numbers = self._public.public_numbers()
        return {"keys": [{"kty": "RSA", "use": "sig", "kid": self.kid, "x5t": self.kid,
                          "n": b64url(numbers.n.to_bytes(256, "big")), "e": b64url(numbers.e.to_bytes(3, "big"))}]}

    def mint(self, audience: str, object_id: str, client_id: str) -> tuple[str, int]:
        """Return (token, expires_at)."""
        now = int(time.time())
        claims = {"aud": audience, "iss": self.issuer, "iat": now, "nbf": now, "exp": now + self.lifetime,
                  "tid": self.tenant_id, "oid": object_id, "sub": object_id, "appid": client_id,
                  "azp": client_id, "idtyp": "app", "ver": "1.0", "uti": uuid.uuid4().hex}
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.kid}), now + self.lifetime

    def validate(self, token: str) -> dict[str, Any]:
        claims = self._valid.get(token)
        if claims is None:
            claims = self._decode(token)
            if len(self._valid) > 4096:
                self._valid.clear()
            self._valid[token] = claims
        if claims["exp"] <= time.time():
            raise TokenError("Token is expired")
        return claims

    def _decode(self, token: str) -> dict[str, Any]:
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise TokenError(f"Token is not a valid JWT: {exc}") from None
        audience = unverified.get("aud")
        if audience not in ACCEPTED_AUDIENCES:
            raise TokenError(f"Found token with aud={audience}, but expected aud={RESOURCE}")
        if unverified.get("tid") != self.tenant_id:
            raise TokenError(f"Found token for tenant {unverified.get('tid')}, but this HSM belongs to "
                             f"tenant {self.tenant_id}")
        try:
            return jwt.decode(token, self._public, algorithms=["RS256"], audience=list(ACCEPTED_AUDIENCES),
                              issuer=self.issuer, options={"require": ["exp", "nbf", "oid", "tid"]})
        except jwt.ExpiredSignatureError:
            raise TokenError("Token is expired") from None
        except jwt.PyJWTError as exc:
            raise TokenError(f"Token validation failed: {exc}") from None
