"""Build `mhsm.so`, the OpenSSL 3 provider: C in csrc/ over the `provider` package.

Run as `python -m provider.build OUTDIR [--python-home H --python-path P ...]` with the Python it
will embed (by default the project's venv). The boot, fork and signal code is the one both shims
share (embedding/csrc/embed.c), included as it is.
"""

from __future__ import annotations

from pathlib import Path

import cffi

from embedding.build import Runtime, build_runtime, c_string, init_code, main, shim_options

HERE = Path(__file__).resolve().parent
MODULE_NAME = "_mhsm_provider"

# Shared with csrc/mhsm.h: what one store object and one signature request look like to Python.
CDEF = """
struct mhsm_object { int kind; long handle; char data_type[16]; char uri[1024]; char desc[256]; };
struct mhsm_sign_request { const char *digest; int pad_mode; int saltlen; const char *mgf1;
                           const unsigned char *data; size_t data_len; };
#define MHSM_OBJECT_KEY 1
#define MHSM_OBJECT_NAME 2
void mhsm_raise(const char *message);
extern "Python" int py_boot(const char *conf, const char *pin_source);
extern "Python" long py_store_open(const char *uri);
extern "Python" int py_store_next(long store, int expect, struct mhsm_object *out);
extern "Python" void py_store_close(long store);
extern "Python" int py_key_public(long handle, unsigned char *der, size_t *der_len, int *is_private);
extern "Python" int py_sign(long handle, struct mhsm_sign_request *request, unsigned char *sig, size_t *sig_len);
extern "Python" long py_decode(const unsigned char *pem, size_t pem_len, char *data_type, size_t data_type_size);
"""


def builder(runtime: Runtime | None = None) -> cffi.FFI:
    runtime = runtime or build_runtime()
    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    ffi.embedding_api("")  # nothing exported through cffi: OSSL_provider_init is the one entry point
    ffi.embedding_init_code(init_code(runtime, MODULE_NAME, "provider"))
    preamble = '#include "embed.c"\n#include "mhsm.h"\n#include "provider.c"\n'
    ffi.set_source(MODULE_NAME, preamble,
                   **shim_options("mhsm.so", runtime, (str(HERE / "csrc"),),
                                  defines=(("MHSM_VERSION", c_string("0.1.0")),), libraries=("crypto",)))
    return ffi


if __name__ == "__main__":
    main(builder, "mhsm.so")
