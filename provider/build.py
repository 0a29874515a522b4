"""Build `mhsm.so`, the OpenSSL 3 provider: C in csrc/ over the `provider` package.

Run as `python -m provider.build OUTDIR` with the venv's Python. The boot, fork and signal code is
the PKCS#11 module's (pkcs11_compat/csrc/embed.c), included as it is; so are that build's paths.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

import cffi

from pkcs11_compat.build import CSRC as EMBED_CSRC
from pkcs11_compat.build import c_string, python_paths

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
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


def builder() -> cffi.FFI:
    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    ffi.embedding_api("")  # nothing exported through cffi: OSSL_provider_init is the one entry point
    paths = python_paths()
    ffi.embedding_init_code(f"""
import sys
for _p in {paths!r}:
    if _p not in sys.path:
        sys.path.append(_p)
from {MODULE_NAME} import ffi, lib
from provider import entry
entry.bind(ffi, lib)
""")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    defines = [("EMBED_NAME", c_string("mhsm.so")), ("EMBED_PYVER", c_string(version)),
               ("EMBED_HOME", c_string(sys.base_prefix)), ("EMBED_PATHS", ", ".join(c_string(p) for p in paths)),
               ("MHSM_VERSION", c_string("0.1.0"))]
    preamble = '#include "embed.c"\n#include "mhsm.h"\n#include "provider.c"\n'
    ffi.set_source(MODULE_NAME, preamble, include_dirs=[str(HERE / "csrc"), str(EMBED_CSRC)],
                   define_macros=defines, libraries=["crypto"], extra_compile_args=["-Wall", "-Wextra", "-O2"],
                   extra_link_args=["-Wl,-z,nodelete", f"-L{sysconfig.get_config_var('LIBDIR')}"])
    return ffi


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else REPO / "build").resolve()
    work = out / "cffi-provider"
    work.mkdir(parents=True, exist_ok=True)
    built = builder().compile(tmpdir=str(work), target="mhsm.so", verbose=False)
    os.replace(built, out / "mhsm.so")
    print(out / "mhsm.so")


if __name__ == "__main__":
    main()
