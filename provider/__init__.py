"""`mhsm.so`, the OpenSSL 3 provider: a C shim (csrc/) over this package, which turns OpenSSL's
requests (store opens, signatures, PEM-wrapped URIs) into calls to `mhsm_core`."""
