"""What every tool shares: loading the library, and turning an error into one sentence with the fix."""

from __future__ import annotations

import re
import sys
from typing import NoReturn

from ..config import ConfigError
from ..errors import AccessDenied, AuthenticationError, HsmError, HsmUnavailable, MhsmError

DENIED = re.compile(r"Microsoft\.KeyVault/managedHsm/(?P<action>[\w/]+) on '?(?P<scope>/[^' ]*)'?", re.IGNORECASE)
# The built-in role that grants each family of data actions (reference §7.3, the live dump).
ROLE_FOR = (("keys/deletedkeys", "Managed HSM Crypto Officer"), ("roleassignments", "Managed HSM Policy Administrator"),
            ("roledefinitions", "Managed HSM Policy Administrator"), ("keys/", "Managed HSM Crypto User"),
            ("rng", "Managed HSM Crypto User"))


def explain(error: Exception) -> str:
    """One sentence: what failed and what to do about it."""
    if isinstance(error, ConfigError):
        return f"the configuration {error.path} is not valid: " + "; ".join(error.problems)
    if isinstance(error, AccessDenied):
        match = DENIED.search(str(error))
        if match:
            action, scope = match["action"], match["scope"]
            role = next((r for prefix, r in ROLE_FOR if action.lower().startswith(prefix)), "a role that grants it")
            return (f"the identity may not {action} at scope {scope} ({error.request_id and 'x-ms-request-id ' + error.request_id}); "
                    f"assign it '{role}' at {scope} (or above) with 'az keyvault role assignment create'")
        return f"access denied: {error}"
    if isinstance(error, HsmUnavailable):
        return f"{error}; check the HSM name or endpoint in the configuration, and the network path to it"
    if isinstance(error, AuthenticationError):
        return str(error)
    if isinstance(error, (HsmError, MhsmError)):
        return str(error)
    return f"unexpected error: {type(error).__name__}: {error}"


def fail(error: Exception) -> NoReturn:
    print(f"Error: {explain(error)}", file=sys.stderr)
    raise SystemExit(1)
