"""Core errors as PKCS#11 return values (the table is in docs/pkcs11.md).

The HSM's request id and, for a 403, the missing role and scope go to the log; the caller gets
the code that PKCS#11 allows for the function and that says best what happened.
"""

from __future__ import annotations

from mhsm_core.config import ConfigError
from mhsm_core.errors import (AccessDenied, AuthenticationError, BadRequest, HsmUnavailable, InvalidArgument,
                              NotFound)

from .ck import lib

KEY_USE = ("C_SignInit", "C_VerifyInit")
OBJECT_USE = ("C_GetAttributeValue", "C_SetAttributeValue")
KEY_CHANGE = ("C_GenerateKeyPair", "C_SetAttributeValue")


def ckr_for(error: Exception, function: str) -> int:
    if isinstance(error, HsmUnavailable):
        return lib.CKR_DEVICE_ERROR
    if isinstance(error, AccessDenied):
        if function in KEY_USE:
            return lib.CKR_KEY_FUNCTION_NOT_PERMITTED
        return lib.CKR_ACTION_PROHIBITED if function == "C_SetAttributeValue" else lib.CKR_FUNCTION_FAILED
    if isinstance(error, NotFound):
        if function in KEY_USE:
            return lib.CKR_KEY_HANDLE_INVALID
        return lib.CKR_OBJECT_HANDLE_INVALID if function in OBJECT_USE else lib.CKR_FUNCTION_FAILED
    if isinstance(error, (InvalidArgument, BadRequest)) and function in KEY_CHANGE:
        return lib.CKR_ATTRIBUTE_VALUE_INVALID if isinstance(error, InvalidArgument) else lib.CKR_TEMPLATE_INCONSISTENT
    if isinstance(error, (ConfigError, AuthenticationError, InvalidArgument, BadRequest)):
        return lib.CKR_FUNCTION_FAILED
    return lib.CKR_DEVICE_ERROR  # any other answer from the HSM
