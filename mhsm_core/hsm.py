"""The core's entry point: the configured HSMs, each with its transport, tokens and keys.

A front end loads a `Library` once (in the nginx master, before the fork) and calls it from any
thread or forked child: the transport and credentials notice a new pid and rebuild their
connections; the configuration, the CA, the cached token and keys and every module signing needs
(imported here: `signing.warm_up`) stay usable, because a worker that has dropped privileges, or a
chrooted one, may no longer be able to read them.
"""

from __future__ import annotations

import logging
import os
import threading

from . import config as config_module
from . import log as log_module
from . import signing
from .config import Config, Token
from .credentials import TokenCache, principal_from_env, principal_from_pin, tenant_from_challenge
from .errors import AuthenticationError
from .keys import KeyStore
from .transport import HsmTransport

logger = logging.getLogger("mhsm.core")


class Hsm:
    """One `tokens[]` entry: one Managed HSM."""

    def __init__(self, config: Config, token: Token) -> None:
        self.config = config
        self.token = token
        self._tenant = config.auth.tenant_id
        self._tenant_lock = threading.Lock()
        self.tokens = TokenCache(config, self.tenant)
        self.transport = HsmTransport(token.base_url, config.options, config.connection_cache, self.tokens.get,
                                      config.log)
        self.keys = KeyStore(self.transport, config.options)

    @property
    def name(self) -> str:
        return self.token.resource_name

    def tenant(self) -> str:
        """The configured tenant, else the one the HSM names in its 401 challenge (as Azure's SDKs do)."""
        with self._tenant_lock:
            if self._tenant is None:
                found = tenant_from_challenge(self.transport.challenge())
                if found is None:
                    raise AuthenticationError(f"the HSM at {self.token.base_url} did not answer with a Bearer "
                                              "challenge naming its tenant; set auth.tenantId in the configuration")
                self._tenant = found
            return self._tenant

    def login(self, pin: str) -> bool:
        """Use the service principal a `<client-id>:<client-secret>` PIN carries; False if the PIN is not one.

        An empty PIN (the official deployment lines use `pin-value=`) keeps the environment's principal
        or the managed identity.
        """
        principal = principal_from_pin(pin) if pin else None
        if principal is not None:
            log_module.register_secret(principal.client_secret)
        self.tokens.set_principal(principal)
        return principal is not None or not pin

    def logout(self) -> None:
        self.tokens.set_principal(None)


class Library:
    """Every configured HSM, keyed by slot id."""

    def __init__(self, config: Config) -> None:
        self.config = config
        log_module.configure(config.log)
        env_principal = principal_from_env()
        if env_principal is not None:
            log_module.register_secret(env_principal.client_secret)
        for warning in config.warnings:
            logger.warning("%s: %s", config.path, warning)
        self.hsms = {token.slot_id: Hsm(config, token) for token in config.tokens}
        signing.warm_up()  # every import the signing path needs, before the host forks or drops privileges
        self.pid = os.getpid()

    @classmethod
    def load(cls, path: str | None = None) -> "Library":
        return cls(config_module.load(path))

    def hsm(self, slot_id: int) -> Hsm:
        return self.hsms[slot_id]
