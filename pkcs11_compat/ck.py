"""PKCS#11 types and constants, as the module's C header defines them.

`_mhsm_pkcs11` is the compiled module itself: cffi registers it when the shim starts Python, so this
package can only run inside `libmhsm-pkcs11.so` (which is where PKCS#11 hosts load it).
"""

from __future__ import annotations

from _mhsm_pkcs11 import ffi, lib  # type: ignore[import-not-found]

__all__ = ["ffi", "lib", "CKRError", "name_of"]


class CKRError(Exception):
    """Ends a PKCS#11 call with this return value; the message (if any) is logged, never returned."""

    def __init__(self, rv: int, message: str = "") -> None:
        super().__init__(message or name_of("CKR_", rv))
        self.rv = rv


_NAMES: dict[tuple[str, int], str] = {}


def name_of(prefix: str, value: int) -> str:
    """'CKR_OK' for ('CKR_', 0): for log lines."""
    if not _NAMES:
        for name in dir(lib):
            if name.startswith("CK") and isinstance(getattr(lib, name), int):
                _NAMES.setdefault((name[:name.index("_") + 1], getattr(lib, name)), name)
    return _NAMES.get((prefix, value), f"{prefix}0x{value:x}")
