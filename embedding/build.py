"""Build helpers every cffi-embedded shim shares: the Python runtime it boots, its set_source()
options and the compile step.

The runtime (home and sys.path) is written into the .so at build time, because the shim boots an
isolated interpreter that reads no PYTHON* variable (see csrc/embed.c). By default it is the one
running the build (the project's venv plus the checkout); a package build passes the installed
paths instead (`--python-home /usr --python-path /usr/lib/python3.11 ...`), so no path of the build
machine ends up in the .so.
"""

from __future__ import annotations

import argparse
import os
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import cffi

CSRC = Path(__file__).resolve().parent / "csrc"
REPO = CSRC.parent.parent


@dataclass(frozen=True)
class Runtime:
    """The Python a shim boots: `home` is its sys.base_prefix, `paths` its whole sys.path, and
    `version` the X.Y it must match in a host that is already Python."""

    home: str
    paths: tuple[str, ...]
    version: str = f"{sys.version_info.major}.{sys.version_info.minor}"


def build_runtime() -> Runtime:
    """The Python running the build: the venv's sys.path, plus the checkout (an editable install's
    path hook is a .pth file, and the shim boots without `site`)."""
    paths = [p for p in sys.path if p and os.path.isdir(p) and not _is_checkout(Path(p))]
    return Runtime(home=sys.base_prefix, paths=tuple(paths) + (str(REPO),))


def _is_checkout(path: Path) -> bool:
    """The checkout (`-m` puts the cwd first; it goes last) or a package in it (a script's own dir)."""
    return path.resolve() == REPO or (path / "__init__.py").exists()


def c_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def init_code(runtime: Runtime, module_name: str, front_end: str) -> str:
    """cffi's embedding_init_code: bind the front end's `entry` to the compiled module. In a Python
    host the runtime's paths are appended, so the host keeps its own first."""
    return f"""
import sys
for _p in {list(runtime.paths)!r}:
    if _p not in sys.path:
        sys.path.append(_p)
from {module_name} import ffi, lib
from {front_end} import entry
entry.bind(ffi, lib)
"""


def shim_options(name: str, runtime: Runtime, include_dirs: Sequence[str] = (),
                 defines: Sequence[tuple[str, str]] = (), libraries: Sequence[str] = ()) -> dict[str, Any]:
    """set_source() options: what csrc/embed.c needs defined (see its header), warnings on, a .so
    that is never unloaded (Python cannot be restarted), and file names relative to the checkout
    (`__FILE__` and debug info carry no path of the build machine)."""
    embed = [("EMBED_NAME", c_string(name)), ("EMBED_PYVER", c_string(runtime.version)),
             ("EMBED_HOME", c_string(runtime.home)),
             ("EMBED_PATHS", ", ".join(c_string(p) for p in runtime.paths))]
    return {"define_macros": embed + list(defines), "libraries": list(libraries),
            "include_dirs": [str(CSRC), *include_dirs],
            "extra_compile_args": ["-Wall", "-Wextra", "-O2", f"-ffile-prefix-map={REPO}/="],
            "extra_link_args": ["-Wl,-z,nodelete", f"-L{sysconfig.get_config_var('LIBDIR')}"]}


def parse_args(argv: Sequence[str], target: str) -> tuple[Path, Runtime]:
    """`OUTDIR [--python-home H] [--python-path P]...`: both default to the building Python's."""
    parser = argparse.ArgumentParser(description=f"build {target}")
    parser.add_argument("outdir", nargs="?", default=str(REPO / "build"))
    parser.add_argument("--python-home", help="the embedded Python's home (sys.base_prefix), e.g. /usr")
    parser.add_argument("--python-path", action="append", metavar="DIR",
                        help="one entry of the embedded sys.path, in order; repeat for each (replaces the default)")
    args = parser.parse_args(argv)
    default = build_runtime()
    runtime = Runtime(home=args.python_home or default.home,
                      paths=tuple(args.python_path) if args.python_path else default.paths)
    return Path(args.outdir).resolve(), runtime


def main(builder: Callable[[Runtime], cffi.FFI], target: str) -> None:
    """Compile `target` into OUTDIR (see parse_args) and print the .so's path."""
    out, runtime = parse_args(sys.argv[1:], target)
    work = out / f"cffi-{Path(target).stem}"
    work.mkdir(parents=True, exist_ok=True)
    built = builder(runtime).compile(tmpdir=str(work), target=target, verbose=False)
    os.replace(built, out / target)
    print(out / target)
