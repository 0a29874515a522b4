"""Assembles the emulator's four listeners in one event loop and publishes how to reach them.

- the HSM data plane (HTTPS, `--host`/`--port`): keys API and role API;
- Entra ID (HTTPS): discovery and the v2 token endpoint, the `authority` of clients;
- managed identity (plain HTTP on loopback, as the real endpoints are);
- the admin interface (plain HTTP on loopback, its own secret).

When all four listen, `emulator.json` and `mhsm-pkcs11.conf` are written atomically into the state
dir; a client waits for `emulator.json` to appear.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any, Iterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from . import admin_api, entra, identity, keys_api, pki, rbac_api
from .connections import Connections
from .control import Control
from .dataplane import Hsm, ServiceHeaders, not_found
from .entra import Issuer
from .store import MANAGED_IDENTITIES, SERVICE_PRINCIPALS, Store
from .tokens import TokenAuthority

LOOPBACK = "127.0.0.1"


class _Server(uvicorn.Server):
    """uvicorn's server without its own signal handling: one handler stops all four listeners."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def _plain_not_found(request: Request, exc: Exception) -> Response:
    """The managed-identity and admin listeners have no service error shape of their own."""
    status = getattr(exc, "status_code", 404)
    return JSONResponse({"error": "not_found" if status == 404 else "method_not_allowed",
                         "error_description": f"{request.method} {request.url.path} is not served here"},
                        status_code=status)


def _starlette(routes: list[Route], missing: Any = _plain_not_found, **state: Any) -> Starlette:
    """`missing` answers unknown paths and methods; each listener needs its own, because only the
    data plane's carries a request id in its state."""
    app = Starlette(routes=routes, exception_handlers={404: missing, 405: missing})
    app.router.redirect_slashes = False
    for name, value in state.items():
        setattr(app.state, name, value)
    return app


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def _write_atomically(path: Path, text: str, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(tmp, path)


def _url(scheme: str, host: str, sock: socket.socket) -> str:
    shown = LOOPBACK if host in ("0.0.0.0", "") else host
    shown = f"[{shown}]" if ":" in shown else shown
    return f"{scheme}://{shown}:{sock.getsockname()[1]}"


def describe(store: Store, state_dir: Path, ca_file: Path, urls: dict[str, str]) -> dict[str, Any]:
    """The contents of emulator.json: everything a client or a test needs to use this emulator."""
    meta = store.meta
    identity_url = urls["identity"]
    principals = {name: {"client_id": p.client_id, "client_secret": p.client_secret, "object_id": p.object_id}
                  for name in SERVICE_PRINCIPALS for p in [store.principal_named(name)]}
    identities: dict[str, Any] = {name: {"client_id": p.client_id, "object_id": p.object_id}
                                  for name in MANAGED_IDENTITIES for p in [store.principal_named(name)]}
    identities["environments"] = {
        "app_service": {"IDENTITY_ENDPOINT": identity_url + identity.APP_SERVICE_PATH,
                        "IDENTITY_HEADER": meta["identity_header"]},
        "imds": {"AZURE_POD_IDENTITY_AUTHORITY_HOST": identity_url},
        "azure_ml": {"MSI_ENDPOINT": identity_url + identity.MSI_PATH, "MSI_SECRET": meta["msi_secret"]},
        "cloud_shell": {"MSI_ENDPOINT": identity_url + identity.MSI_PATH},
    }
    return {
        "url": urls["hsm"], "admin_url": urls["admin"], "admin_secret": meta["admin_secret"],
        "tenant_id": meta["tenant_id"], "authority": urls["login"], "ca_file": str(ca_file),
        "hsm_name": meta["hsm_name"], "hsm_host": f"{meta['hsm_name']}.managedhsm.azure.net",
        "scenario": meta["scenario"], "identity_url": identity_url, "recoverable_days": store.recoverable_days,
        "conf_file": str(state_dir / "mhsm-pkcs11.conf"), "pid": os.getpid(),
        "principals": principals, "managed_identities": identities,
        "roles": {r.role_name: r.guid for r in store.custom_roles.values()},
    }


def pkcs11_conf(info: dict[str, Any]) -> dict[str, Any]:
    """An official-format mhsm-pkcs11.conf for this emulator; our extensions are documented in docs/."""
    return {
        "tokens": [{"slotid": 0, "protocol": "https://", "uri": "managedhsm.azure.net",
                    "resourceName": info["hsm_name"], "resourceType": "mhsm", "endpoint": info["url"] + "/"}],
        "msi": {"identityMSI": False, "MSIClientID": "", "IMDSEndpoint": info["identity_url"]},
        "options": {"DisableTLSAuthentication": False, "CAFile": info["ca_file"]},
        "auth": {"authority": info["authority"], "tenantId": info["tenant_id"]},
        "log": {"directory": "/var/log/mhsm-pkcs11",
                "module": {"P11Interfaces": False, "FunctionLevelTrace": False,
                           "curl": {"Level": "Off", "DisplayAsHex": False}},
                "flags": {"CloseFileAfterWrite": False, "SendToFile": False, "SendToStdOut": False,
                          "SendToStdErr": False, "IncludeProcessId": False, "IncludeThreadId": False,
                          "IncludePINs": False}},
        "ConnectionCache": {"Disable": False, "MaxConnections": 20},
    }


def build(state_dir: Path, scenario: str, hsm_name: str, token_lifetime: int,
          recoverable_days: int = 90) -> tuple[Store, pki.Pki, dict[str, ASGIApp], Connections]:
    store = Store(state_dir / "state.db")
    if not store.initialized:
        store.initialize(hsm_name, scenario, recoverable_days)
    elif (store.meta["hsm_name"], store.meta["scenario"]) != (hsm_name, scenario):
        print(f"mhsm-emulator: {state_dir} already holds HSM '{store.meta['hsm_name']}' "
              f"(scenario {store.meta['scenario']}); keeping it", file=sys.stderr)
    keys = pki.load_or_create(state_dir, store.meta["hsm_name"])
    control = Control()
    tokens = TokenAuthority(keys.token_key, store.meta["tenant_id"], token_lifetime)

    def accepted() -> None:
        control.connections_accepted += 1

    connections = Connections(accepted)
    issuer = Issuer(store, tokens, control)
    hsm_routes = [*keys_api.ROUTES, Route("/{path:path}", rbac_api.role_api, methods=["GET", "PUT", "DELETE"])]
    apps: dict[str, ASGIApp] = {
        "hsm": ServiceHeaders(_starlette(hsm_routes, not_found, hsm=Hsm(store, tokens, control, connections)),
                              control),
        "login": _starlette(entra.ROUTES, entra.not_found, issuer=issuer),
        "identity": _starlette(identity.ROUTES, issuer=issuer),
        "admin": _starlette(admin_api.ROUTES, control=control, admin_secret=store.meta["admin_secret"]),
    }
    return store, keys, apps, connections


def serve(state_dir: Path, host: str, port: int, scenario: str, hsm_name: str, token_lifetime: int,
          recoverable_days: int = 90) -> int:
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    (state_dir / "emulator.json").unlink(missing_ok=True)
    store, keys, apps, connections = build(state_dir, scenario, hsm_name, token_lifetime, recoverable_days)
    sockets = {"hsm": _bind(host, port), "login": _bind(host, 0), "identity": _bind(LOOPBACK, 0),
               "admin": _bind(LOOPBACK, 0)}
    tls = {"ssl_certfile": str(keys.cert_file), "ssl_keyfile": str(keys.key_file)}
    servers = {
        name: _Server(uvicorn.Config(
            app, lifespan="off", log_level="warning", access_log=False, server_header=False,
            timeout_keep_alive=120, timeout_graceful_shutdown=0.2,
            http=connections.protocol() if name == "hsm" else "httptools",
            **(tls if name in ("hsm", "login") else {})))
        for name, app in apps.items()
    }
    urls = {name: _url("https" if name in ("hsm", "login") else "http", host if name in ("hsm", "login")
                       else LOOPBACK, sock) for name, sock in sockets.items()}

    async def main() -> None:
        loop = asyncio.get_running_loop()

        def stop() -> None:
            for server in servers.values():
                server.should_exit = True

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop)
        tasks = [asyncio.create_task(servers[name].serve(sockets=[sockets[name]])) for name in servers]
        while not all(s.started for s in servers.values()):
            if any(t.done() for t in tasks):
                stop()
                break
            await asyncio.sleep(0.01)
        else:
            info = describe(store, state_dir, keys.ca_file, urls)
            _write_atomically(state_dir / "mhsm-pkcs11.conf", json.dumps(pkcs11_conf(info), indent=2) + "\n", 0o644)
            _write_atomically(state_dir / "emulator.json", json.dumps(info, indent=2) + "\n", 0o600)
            print(f"mhsm-emulator: HSM {info['url']}  authority {info['authority']}  admin {info['admin_url']}  "
                  f"(scenario {info['scenario']}, state {state_dir})", file=sys.stderr, flush=True)
        await asyncio.gather(*tasks, return_exceptions=True)

    try:
        import uvloop
        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
    (state_dir / "emulator.json").unlink(missing_ok=True)
    return 0
