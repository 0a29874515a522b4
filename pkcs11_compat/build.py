"""Build `libmhsm-pkcs11.so`: a PKCS#11 2.40 module whose C side is a thin shim over `pkcs11_compat`.

Run as `python -m pkcs11_compat.build OUTDIR [--python-home H --python-path P ...]` with the Python
the module will embed (by default the project's venv; see embedding/build.py). The PKCS#11 types
and constants come from the system's p11-kit header (Debian's libp11-kit-dev), not from a copy in
this tree. Every function prototype is read from that header so
the compiler checks each wrapper against the standard's declaration.

cffi's embedding API generates the C that enters Python; this file only decides what goes in:
  - the cdef: the header's types and constants, plus one `extern "Python"` per implemented call;
  - generated C: one exported wrapper per implemented call, one stub per other entry of the function
    list, and the function list itself (no library writes these from a header; it is a table walk);
  - embedding/csrc/embed.c (boot CPython, fork hooks, SIGPIPE; shared with the provider) and
    csrc/pkcs11_shim.c (init state, the pure-C entry points), both written by hand.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import replace
from pathlib import Path

import cffi

from embedding.build import Runtime, build_runtime, init_code, main, shim_options

CSRC = Path(__file__).resolve().parent / "csrc"
P11KIT_INCLUDE = "/usr/include/p11-kit-1"
MODULE_NAME = "_mhsm_pkcs11"

# The calls that enter Python (the official library's 26, less the three the C side owns, plus
# multi-part sign/verify). C_Initialize and C_Finalize are written in csrc/pkcs11_shim.c because they
# also keep the C-side "initialised in this pid" flag; C_GetFunctionList never enters Python.
FORWARDED = (
    "C_GetInfo", "C_GetSlotList", "C_GetSlotInfo", "C_GetTokenInfo", "C_GetMechanismList",
    "C_GetMechanismInfo", "C_OpenSession", "C_CloseSession", "C_CloseAllSessions", "C_GetSessionInfo",
    "C_Login", "C_Logout", "C_FindObjectsInit", "C_FindObjects", "C_FindObjectsFinal", "C_GenerateKeyPair",
    "C_GenerateRandom", "C_SeedRandom", "C_GetAttributeValue", "C_SetAttributeValue", "C_SignInit", "C_Sign",
    "C_SignUpdate", "C_SignFinal", "C_VerifyInit", "C_Verify", "C_VerifyUpdate", "C_VerifyFinal",
)
HAND_WRITTEN = ("C_Initialize", "C_Finalize", "C_GetFunctionList")
# PKCS#11 2.40 §5.16: the legacy parallel-function calls "should simply return CKR_FUNCTION_NOT_PARALLEL".
LEGACY = ("C_GetFunctionStatus", "C_CancelFunction")
PYTHON_ENTRIES = FORWARDED + ("C_Initialize", "C_Finalize")


def _preprocess(*flags: str) -> str:
    return subprocess.run(["gcc", "-E", *flags, f"-I{P11KIT_INCLUDE}", "-"], input="#include <p11-kit/pkcs11.h>\n",
                          capture_output=True, text=True, check=True).stdout


def header_declarations() -> str:
    """The header's own declarations after preprocessing (the <stddef.h> lines cffi cannot parse dropped)."""
    kept, ours = [], False
    for line in _preprocess().splitlines():
        if line.startswith("# "):
            ours = line.split('"')[1].endswith("p11-kit/pkcs11.h")
            continue
        if ours and line.strip():
            kept.append(line)
    return "\n".join(kept)


def prototypes(declarations: str) -> dict[str, str]:
    """Function name -> parameter list text, e.g. 'C_CloseSession' -> 'CK_SESSION_HANDLE session'."""
    found = dict(re.findall(r"\bCK_RV (C_\w+) \(([^)]*)\) ?;", re.sub(r"\s+", " ", declarations)))
    if len(found) != 68:
        raise SystemExit(f"expected the 68 functions of PKCS#11 2.40 in {P11KIT_INCLUDE}, found {len(found)}")
    return found


def constants() -> list[str]:
    """Every CK*_ integer constant the header defines; the compiler supplies each value."""
    names = re.findall(r"^#define (CK[A-Z]?_\w+) ", _preprocess("-dM"), re.M)
    skip = {"CK_PTR", "CK_DEFINE_FUNCTION", "CK_DECLARE_FUNCTION", "CK_DECLARE_FUNCTION_POINTER",
            "CK_CALLBACK_FUNCTION", "CK_SPEC", "CK_INVALID_HANDLE_T"}
    return [f"#define {n} ..." for n in sorted(set(names)) if n not in skip and not n.startswith("CK_C_")]


def parameter_names(params: str) -> list[str]:
    return [] if params.strip() in ("", "void") else [re.findall(r"\w+", p)[-1] for p in params.split(",")]


def python_entry_declarations(protos: dict[str, str]) -> str:
    """cffi defines the py_* functions after the preamble; the shim calls them before that."""
    return "\n".join(f"static CK_RV py_{name}({protos[name]});" for name in PYTHON_ENTRIES)


def generated_c(protos: dict[str, str]) -> str:
    """Wrappers, stubs and the function list, one line each (a table walk over the header)."""
    out = []
    for name, params in protos.items():
        args = parameter_names(params)
        if name in FORWARDED:
            out.append(f"CK_RV {name}({params}) {{ SHIM_FORWARD(py_{name}({', '.join(args)})); }}")
        elif name not in HAND_WRITTEN:
            unused = " ".join(f"(void){a};" for a in args)
            stub = "shim_not_parallel" if name in LEGACY else "shim_not_supported"
            out.append(f"CK_RV {name}({params}) {{ {unused} return {stub}(); }}")
    out.append("static CK_FUNCTION_LIST shim_function_list = { .version = {2, 40},")
    out.extend(f"    .{name} = {name}," for name in protos)
    out.append("};")
    return "\n".join(out)


def builder(runtime: Runtime | None = None, python_version: str | None = None) -> cffi.FFI:
    """The cffi builder for `runtime` (default: the building Python's); `python_version` overrides
    the X.Y the module accepts in a Python host (a test builds one for another version to prove the
    module refuses it cleanly)."""
    runtime = runtime or build_runtime()
    if python_version:
        runtime = replace(runtime, version=python_version)
    declarations = header_declarations()
    protos = prototypes(declarations)
    ffi = cffi.FFI()
    cdef_types = re.sub(r"\bCK_RV C_\w+ \([^)]*\) ?;", "", re.sub(r"\s+", " ", declarations))
    ffi.cdef(cdef_types.replace(";", ";\n"))
    ffi.cdef("\n".join(constants()))
    ffi.cdef("\n".join(f'extern "Python" CK_RV py_{n}({protos[n]});' for n in PYTHON_ENTRIES))
    ffi.embedding_api("")  # nothing exported through cffi: the C wrappers own every entry point
    ffi.embedding_init_code(init_code(runtime, MODULE_NAME, "pkcs11_compat"))
    preamble = "\n".join(["#include <p11-kit/pkcs11.h>", '#include "embed.c"', python_entry_declarations(protos),
                          '#include "pkcs11_shim.c"', generated_c(protos)])
    ffi.set_source(MODULE_NAME, preamble, **shim_options("libmhsm-pkcs11", runtime, (str(CSRC), P11KIT_INCLUDE)))
    return ffi


if __name__ == "__main__":
    main(builder, "libmhsm-pkcs11.so")
