"""The C ⇄ Python boundary of the provider: one handler per `extern "Python"` call in build.py.

Each handler reads C arguments, calls `Stores` or `signatures`, and writes results back. No
exception crosses into C: each becomes one OpenSSL error line (through the shim's `mhsm_raise`,
so nginx and the openssl CLI print it) and the handler's failure value.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable

from mhsm_core.config import ConfigError
from mhsm_core.errors import MhsmError
from mhsm_core.log import HOST_HAS_IT
from mhsm_core.tools.common import explain

from . import signatures
from .stores import Stores

log = logging.getLogger("mhsm.provider")
STORES = Stores()
HANDLERS: dict[str, tuple[Callable[..., Any], Any]] = {}
_ffi: Any = None
_lib: Any = None


def bind(ffi: Any, lib: Any) -> None:
    """Called once by the shim's init code: connect every py_* declaration to its handler."""
    global _ffi, _lib
    _ffi, _lib = ffi, lib
    for name, (handler, failure) in HANDLERS.items():
        ffi.def_extern(name=name, error=failure)(handler)


def _entry(failure: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def wrap(function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def handler(*args: Any) -> Any:
            try:
                return function(*args)
            except (MhsmError, ConfigError) as exc:
                message = explain(exc)
            except Exception as exc:  # a bug here must not take the host down; say where it was
                log.exception("%s: unexpected error", function.__name__, extra=HOST_HAS_IT)
                message = explain(exc)
            log.error("%s: %s", function.__name__, message, extra=HOST_HAS_IT)  # the host prints the queue
            _lib.mhsm_raise(message.encode("utf-8", "replace"))
            return failure

        HANDLERS[function.__name__] = (handler, failure)
        return handler

    return wrap


def _text(pointer: Any) -> str:
    return _ffi.string(pointer).decode("utf-8") if pointer != _ffi.NULL else ""


def _copy_text(field: Any, size: int, text: str) -> None:
    data = text.encode("utf-8")
    if len(data) >= size:
        raise MhsmError(f"{text[:60]}...: longer than {size - 1} bytes, the most the provider passes on")
    _ffi.memmove(field, data + b"\0", len(data) + 1)


def _write(out: Any, out_len: Any, data: bytes) -> None:
    """Copy into a C buffer whose capacity *out_len holds, and set *out_len to the length."""
    if len(data) > out_len[0]:
        raise MhsmError(f"a {len(data)}-byte result does not fit the caller's {out_len[0]}-byte buffer")
    _ffi.memmove(out, data, len(data))
    out_len[0] = len(data)


@_entry(0)
def py_boot(conf: Any, pin_source: Any) -> int:
    STORES.configure(_text(conf), _text(pin_source))
    return 1


@_entry(0)
def py_store_open(uri: Any) -> int:
    return STORES.open(_text(uri))


@_entry(-1)
def py_store_next(store: int, expect: int, out: Any) -> int:
    found = STORES.next(store, expect)
    if found is None:
        return 0
    kind, obj, handle = found
    if kind == "name":
        out.kind = _lib.MHSM_OBJECT_NAME
        _copy_text(out.uri, len(out.uri), obj.uri)
        _copy_text(out.desc, len(out.desc), obj.description[:len(out.desc) - 1])
    else:
        out.kind, out.handle = _lib.MHSM_OBJECT_KEY, handle
        _copy_text(out.data_type, len(out.data_type), obj.data_type)
    return 1


@_entry(None)
def py_store_close(store: int) -> None:
    STORES.close(store)


@_entry(0)
def py_key_public(handle: int, der: Any, der_len: Any, is_private: Any) -> int:
    from cryptography.hazmat.primitives import serialization

    obj = STORES.object(handle)
    _write(der, der_len, obj.key.public_key.public_bytes(serialization.Encoding.DER,
                                                         serialization.PublicFormat.SubjectPublicKeyInfo))
    is_private[0] = int(obj.side == "private")
    return 1


@_entry(0)
def py_sign(handle: int, request: Any, sig: Any, sig_len: Any) -> int:
    data = _ffi.buffer(request.data, request.data_len)[:]
    signature = signatures.sign(STORES.object(handle), _text(request.digest), request.pad_mode, request.saltlen,
                                _text(request.mgf1), data)
    _write(sig, sig_len, signature)
    return 1


@_entry(0)
def py_decode(pem: Any, pem_len: int, data_type: Any, data_type_size: int) -> int:
    obj = STORES.decode(_ffi.buffer(pem, pem_len)[:])
    _copy_text(data_type, data_type_size, obj.data_type)
    return STORES.handle(obj)
