"""The PKCS#11 2.40 front end: `libmhsm-pkcs11.so` is a C shim (built by `build.py`) that calls the
handlers in `entry.py`, which translate C arguments into calls on `mhsm_core` and back.

Policy lives in the core; this package holds only what PKCS#11 itself defines: slots, sessions,
object handles, attribute encodings, mechanisms and return codes.
"""
