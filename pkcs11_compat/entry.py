"""The C ⇄ Python boundary: one handler per PKCS#11 call, registered as cffi `extern "Python"`.

A handler checks the C arguments (NULL pointers and lengths become CKR_ARGUMENTS_BAD), turns them
into Python values, calls `Module`, and writes results back with PKCS#11's length conventions. No
exception crosses into C: `_entry` maps each one to a return code and logs it.

Checks run in one order everywhere (docs/pkcs11.md, "Return values"): initialised (the C shim), the
session handle, the pointer arguments, the operation state, the mechanism, then template values.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable

from mhsm_core.config import ConfigError
from mhsm_core.errors import MhsmError
from mhsm_core.tools.common import explain

from . import mechanisms, objects
from .ck import CKRError, ffi, lib, name_of
from .errors import ckr_for
from .module import VERSION, Module, Operation, Session

log = logging.getLogger("mhsm.pkcs11")
MODULE = Module()
HANDLERS: dict[str, Callable[..., int]] = {}
UNAVAILABLE = lib.CK_UNAVAILABLE_INFORMATION
MANUFACTURER = "mhsm-tls-offload"


def bind(ffi_: Any, lib_: Any) -> None:
    """Called once by the module's init code: connect every py_C_* declaration to its handler."""
    for name, handler in HANDLERS.items():
        ffi_.def_extern(name=f"py_{name}", error=lib_.CKR_GENERAL_ERROR)(handler)


def _entry(function: Callable[..., None]) -> Callable[..., int]:
    name = function.__name__

    @functools.wraps(function)
    def handler(*args: Any) -> int:
        try:
            result = function(*args)
            rv = lib.CKR_OK if result is None else result
            if log.isEnabledFor(logging.DEBUG):  # the official log.module.FunctionLevelTrace: every call
                log.debug("%s: %s", name, name_of("CKR_", rv))
            return rv
        except CKRError as exc:
            log.debug("%s: %s (%s)", name, name_of("CKR_", exc.rv), exc)
            return exc.rv
        except (MhsmError, ConfigError) as exc:
            rv = ckr_for(exc, name)
            log.error("%s: %s: %s", name, name_of("CKR_", rv), explain(exc))
            return rv
        except Exception:  # a bug here must not take the host down; say where it was
            log.exception("%s: unexpected error", name)
            return lib.CKR_FUNCTION_FAILED

    HANDLERS[name] = handler
    return handler


# -- marshalling -----------------------------------------------------------------------------------

def _require(*pointers: Any) -> None:
    if any(p == ffi.NULL for p in pointers):
        raise CKRError(lib.CKR_ARGUMENTS_BAD, "a required pointer is NULL")


def _bytes(pointer: Any, length: int) -> bytes:
    if pointer == ffi.NULL:
        if length:
            raise CKRError(lib.CKR_ARGUMENTS_BAD, "NULL data with a non-zero length")
        return b""
    return ffi.buffer(pointer, length)[:]


def _attributes(pointer: Any, count: int) -> list[tuple[int, Any]]:
    """A CK_ATTRIBUTE array as (type, value) pairs, in order."""
    if pointer == ffi.NULL and count:
        raise CKRError(lib.CKR_ARGUMENTS_BAD, "NULL template with a non-zero count")
    pairs = []
    for i in range(count):
        attribute = pointer[i]
        if attribute.pValue == ffi.NULL and attribute.ulValueLen:
            raise CKRError(lib.CKR_ATTRIBUTE_VALUE_INVALID, f"attribute 0x{attribute.type:x} has no value")
        raw = ffi.buffer(attribute.pValue, attribute.ulValueLen)[:] if attribute.ulValueLen else b""
        pairs.append((attribute.type, objects.decode(attribute.type, raw)))
    return pairs


def _template(pointer: Any, count: int) -> dict[int, Any]:
    """A template that makes or changes an object, as {type: value}; an attribute twice is inconsistent."""
    values: dict[int, Any] = {}
    for kind, value in _attributes(pointer, count):
        if kind in values:
            raise CKRError(lib.CKR_TEMPLATE_INCONSISTENT, f"attribute 0x{kind:x} appears twice")
        values[kind] = value
    return values


def _search(pointer: Any, count: int) -> dict[int, Any] | None:
    """A search template as {type: value}, or None when it asks one attribute for two values (it then
    matches nothing: C_FindObjectsInit has no CKR_TEMPLATE_INCONSISTENT in PKCS#11 2.40)."""
    values: dict[int, Any] = {}
    for kind, value in _attributes(pointer, count):
        if values.setdefault(kind, value) != value:
            return None
    return values


def _give(data: bytes | list[int], out: Any, length: Any, item: str = "CK_BYTE") -> int:
    """PKCS#11's output rule: NULL asks the size, a short buffer gets CKR_BUFFER_TOO_SMALL."""
    _require(length)
    count = len(data)
    if out == ffi.NULL:
        length[0] = count
        return lib.CKR_OK
    if length[0] < count:
        length[0] = count
        return lib.CKR_BUFFER_TOO_SMALL
    if item == "CK_BYTE":
        ffi.memmove(out, bytes(data), count)  # type: ignore[arg-type]
    else:
        for i, value in enumerate(data):
            out[i] = value
    length[0] = count
    return lib.CKR_OK


def _text(field: Any, text: str) -> None:
    """A blank-padded, unterminated CK_UTF8CHAR field."""
    size = len(field)
    ffi.memmove(field, text.encode("utf-8")[:size].ljust(size, b" "), size)


def _version(field: Any, version: tuple[int, int]) -> None:
    field.major, field.minor = version


# -- general ---------------------------------------------------------------------------------------

@_entry
def C_Initialize(init_args: Any) -> None:
    if init_args != ffi.NULL:
        args = ffi.cast("CK_C_INITIALIZE_ARGS *", init_args)
        if args.pReserved != ffi.NULL:
            raise CKRError(lib.CKR_ARGUMENTS_BAD, "CK_C_INITIALIZE_ARGS.pReserved must be NULL")
        given = [f != ffi.NULL for f in (args.CreateMutex, args.DestroyMutex, args.LockMutex, args.UnlockMutex)]
        if any(given) and not all(given):
            raise CKRError(lib.CKR_ARGUMENTS_BAD, "the mutex callbacks must be all set or all NULL")
        # With or without CKF_OS_LOCKING_OK the module locks with the OS's primitives, which PKCS#11
        # allows whenever they are usable; the application's callbacks are never needed.
    MODULE.initialize()


@_entry
def C_Finalize(reserved: Any) -> None:
    if reserved != ffi.NULL:
        raise CKRError(lib.CKR_ARGUMENTS_BAD, "C_Finalize's argument must be NULL")
    MODULE.finalize()


@_entry
def C_GetInfo(info: Any) -> None:
    _require(info)
    MODULE.loaded()
    _version(info.cryptokiVersion, (2, 40))
    _text(info.manufacturerID, MANUFACTURER)
    info.flags = 0
    _text(info.libraryDescription, "Managed HSM TLS offload (open)")
    _version(info.libraryVersion, VERSION)


@_entry
def C_GetSlotList(token_present: int, slots: Any, count: Any) -> int:
    return _give(MODULE.slot_ids(), slots, count, item="CK_SLOT_ID")


@_entry
def C_GetSlotInfo(slot_id: int, info: Any) -> None:
    _require(info)
    hsm = MODULE.hsm(slot_id)
    _text(info.slotDescription, f"Managed HSM {hsm.name} ({hsm.token.base_url})")
    _text(info.manufacturerID, MANUFACTURER)
    info.flags = lib.CKF_TOKEN_PRESENT
    _version(info.hardwareVersion, VERSION)
    _version(info.firmwareVersion, VERSION)


@_entry
def C_GetTokenInfo(slot_id: int, info: Any) -> None:
    _require(info)
    hsm = MODULE.hsm(slot_id)
    sessions, rw_sessions = MODULE.session_counts(slot_id)
    _text(info.label, hsm.name)
    _text(info.manufacturerID, "Microsoft Azure")
    _text(info.model, "Managed HSM")
    _text(info.serialNumber, MODULE.token_serial(slot_id))
    # No CKF_LOGIN_REQUIRED: the process proves itself to the HSM with its Entra credential, not a
    # PIN. With the flag, libp11 reads the official line's empty `pin-value=` as "no PIN" and fails
    # trying to prompt; without it, libp11 finds and uses the key as it does with the official library.
    info.flags = lib.CKF_RNG | lib.CKF_USER_PIN_INITIALIZED | lib.CKF_TOKEN_INITIALIZED
    info.ulMaxSessionCount = info.ulMaxRwSessionCount = lib.CK_EFFECTIVELY_INFINITE
    info.ulSessionCount, info.ulRwSessionCount = sessions, rw_sessions
    info.ulMaxPinLen, info.ulMinPinLen = 1024, 0
    info.ulTotalPublicMemory = info.ulFreePublicMemory = UNAVAILABLE
    info.ulTotalPrivateMemory = info.ulFreePrivateMemory = UNAVAILABLE
    _version(info.hardwareVersion, VERSION)
    _version(info.firmwareVersion, VERSION)
    _text(info.utcTime, "")


@_entry
def C_GetMechanismList(slot_id: int, mechanism_list: Any, count: Any) -> int:
    MODULE.hsm(slot_id)
    return _give(list(mechanisms.MECHANISMS), mechanism_list, count, item="CK_MECHANISM_TYPE")


@_entry
def C_GetMechanismInfo(slot_id: int, mechanism_type: int, info: Any) -> None:
    _require(info)
    MODULE.hsm(slot_id)
    info.ulMinKeySize, info.ulMaxKeySize, info.flags = mechanisms.info(mechanism_type)


# -- sessions --------------------------------------------------------------------------------------

@_entry
def C_OpenSession(slot_id: int, flags: int, application: Any, notify: Any, session: Any) -> None:
    _require(session)
    session[0] = MODULE.open_session(slot_id, flags)


@_entry
def C_CloseSession(session: int) -> None:
    MODULE.close_session(session)


@_entry
def C_CloseAllSessions(slot_id: int) -> None:
    MODULE.close_all_sessions(slot_id)


@_entry
def C_GetSessionInfo(session: int, info: Any) -> None:
    _require(info)
    found = MODULE.session(session)
    info.slotID = found.slot_id
    info.state = MODULE.session_state(found)
    info.flags = lib.CKF_SERIAL_SESSION | (lib.CKF_RW_SESSION if found.read_write else 0)
    info.ulDeviceError = 0


@_entry
def C_Login(session: int, user_type: int, pin: Any, pin_length: int) -> None:
    MODULE.session(session)
    try:
        text = _bytes(pin, pin_length).decode("utf-8")
    except UnicodeDecodeError:
        raise CKRError(lib.CKR_PIN_INCORRECT, "the PIN is not UTF-8") from None
    MODULE.login(session, user_type, text)


@_entry
def C_Logout(session: int) -> None:
    MODULE.logout(session)


# -- objects ---------------------------------------------------------------------------------------

@_entry
def C_FindObjectsInit(session: int, template: Any, count: int) -> None:
    MODULE.session(session)
    MODULE.find_init(session, _search(template, count))


@_entry
def C_FindObjects(session: int, found: Any, max_count: int, count: Any) -> None:
    _require(found, count)
    batch = MODULE.find_next(session, max_count)
    for i, handle in enumerate(batch):
        found[i] = handle
    count[0] = len(batch)


@_entry
def C_FindObjectsFinal(session: int) -> None:
    MODULE.find_final(session)


@_entry
def C_GetAttributeValue(session: int, handle: int, template: Any, count: int) -> int:
    MODULE.session(session)
    if template == ffi.NULL and count:
        raise CKRError(lib.CKR_ARGUMENTS_BAD, "NULL template with a non-zero count")
    values = MODULE.object_attributes(session, handle)
    rv = lib.CKR_OK
    for i in range(count):
        attribute = template[i]
        if attribute.type in values:
            data = objects.encode(attribute.type, values[attribute.type])
            if attribute.pValue == ffi.NULL:
                attribute.ulValueLen = len(data)
                continue
            if attribute.ulValueLen >= len(data):
                ffi.memmove(attribute.pValue, data, len(data))
                attribute.ulValueLen = len(data)
                continue
            problem = lib.CKR_BUFFER_TOO_SMALL
        elif attribute.type in objects.SENSITIVE and values[lib.CKA_CLASS] == objects.PRIVATE:
            problem = lib.CKR_ATTRIBUTE_SENSITIVE
        else:
            problem = lib.CKR_ATTRIBUTE_TYPE_INVALID
        attribute.ulValueLen = UNAVAILABLE
        rv = rv if rv != lib.CKR_OK else problem
    return rv


@_entry
def C_SetAttributeValue(session: int, handle: int, template: Any, count: int) -> None:
    MODULE.session(session)
    MODULE.set_attributes(session, handle, _template(template, count))


@_entry
def C_GenerateKeyPair(session: int, mechanism: Any, public_template: Any, public_count: int, private_template: Any,
                      private_count: int, public_key: Any, private_key: Any) -> None:
    MODULE.session(session)
    _require(mechanism, public_key, private_key)
    MODULE.keygen_mechanism(mechanism.mechanism)
    if mechanism.pParameter != ffi.NULL or mechanism.ulParameterLen:
        raise CKRError(lib.CKR_MECHANISM_PARAM_INVALID, "key-pair generation takes no mechanism parameter")
    handles = MODULE.generate_key_pair(session, mechanism.mechanism, _template(public_template, public_count),
                                       _template(private_template, private_count))
    public_key[0], private_key[0] = handles


@_entry
def C_GenerateRandom(session: int, out: Any, length: int) -> None:
    MODULE.session(session)
    if out == ffi.NULL and length:
        raise CKRError(lib.CKR_ARGUMENTS_BAD, "NULL buffer")
    data = MODULE.random(session, length)
    ffi.memmove(out, data, len(data))


@_entry
def C_SeedRandom(session: int, seed: Any, length: int) -> None:
    MODULE.session(session)
    if seed == ffi.NULL and length:
        raise CKRError(lib.CKR_ARGUMENTS_BAD, "NULL seed with a non-zero length")
    MODULE.seed_random(session)


# -- sign and verify -------------------------------------------------------------------------------

def _init(session: int, kind: str, mechanism: Any, key: int) -> None:
    MODULE.session(session)
    _require(mechanism)
    MODULE.operation_init(session, kind, mechanism.mechanism, mechanism.pParameter, mechanism.ulParameterLen, key)


def _signature(session: int, data: Callable[[], bytes | None], signature: Any, length: Any) -> int:
    """C_Sign and C_SignFinal: the size query and a short buffer keep the operation; all else ends it."""
    result = [lib.CKR_OK]

    def body(found: Session, op: Operation) -> bool:
        _require(length)
        needed = op.signature_length
        if signature == ffi.NULL or length[0] < needed:
            result[0] = lib.CKR_OK if signature == ffi.NULL else lib.CKR_BUFFER_TOO_SMALL
            length[0] = needed
            return True
        result[0] = _give(MODULE.sign(found, op, data()), signature, length)
        return False

    MODULE.step(session, "sign", body)
    return result[0]


def _update(session: int, kind: str, part: Any, length: int) -> None:
    def body(found: Session, op: Operation) -> bool:
        op.update(_bytes(part, length))
        return True

    MODULE.step(session, kind, body)


def _check(session: int, data: Callable[[], bytes | None], signature: Any, length: int) -> None:
    def body(found: Session, op: Operation) -> bool:
        op.verify(op.finish_input(data()), _bytes(signature, length))
        return False

    MODULE.step(session, "verify", body)


@_entry
def C_SignInit(session: int, mechanism: Any, key: int) -> None:
    _init(session, "sign", mechanism, key)


@_entry
def C_Sign(session: int, data: Any, length: int, signature: Any, signature_length: Any) -> int:
    return _signature(session, lambda: _bytes(data, length), signature, signature_length)


@_entry
def C_SignUpdate(session: int, part: Any, length: int) -> None:
    _update(session, "sign", part, length)


@_entry
def C_SignFinal(session: int, signature: Any, signature_length: Any) -> int:
    return _signature(session, lambda: None, signature, signature_length)


@_entry
def C_VerifyInit(session: int, mechanism: Any, key: int) -> None:
    _init(session, "verify", mechanism, key)


@_entry
def C_Verify(session: int, data: Any, length: int, signature: Any, signature_length: int) -> None:
    _check(session, lambda: _bytes(data, length), signature, signature_length)


@_entry
def C_VerifyUpdate(session: int, part: Any, length: int) -> None:
    _update(session, "verify", part, length)


@_entry
def C_VerifyFinal(session: int, signature: Any, signature_length: int) -> None:
    _check(session, lambda: None, signature, signature_length)
