"""The emulator's state: keys and their versions, deleted keys, roles, assignments and principals.

Everything lives in memory for speed (the sign path never touches disk) and every change is written
through to SQLite in the state directory, so a restart with the same `--state-dir` keeps it all.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import keycrypto, rbac

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS key_versions (name TEXT NOT NULL, version TEXT NOT NULL, data TEXT NOT NULL,
                                         private_pem BLOB NOT NULL, PRIMARY KEY (name, version));
CREATE TABLE IF NOT EXISTS deleted_keys (name TEXT PRIMARY KEY, deleted_date INTEGER NOT NULL,
                                         scheduled_purge_date INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS role_definitions (guid TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS role_assignments (name TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS principals (object_id TEXT PRIMARY KEY, data TEXT NOT NULL);
"""

DEFAULT_RECOVERABLE_DAYS = 90  # the service's default; an HSM can be created with 7 to 90
SERVICE_PRINCIPALS = ("tls-offload", "keygen", "admin", "nobody")
MANAGED_IDENTITIES = ("system-assigned", "user-assigned")


@dataclass
class KeyVersion:
    """One version of a key. `private_key` is the real key; no API ever returns it."""

    name: str
    version: str
    kty: str
    crv: str | None
    size: int | None
    key_ops: list[str]
    enabled: bool
    nbf: int | None
    exp: int | None
    created: int
    updated: int
    tags: dict[str, str]
    seq: int
    private_key: keycrypto.PrivateKey = field(repr=False, compare=False)

    def record(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("private_key")
        return data


@dataclass
class KeyRecord:
    """A key name with its versions in creation order, and its soft-delete state."""

    versions: list[KeyVersion] = field(default_factory=list)
    deleted_date: int | None = None
    scheduled_purge_date: int | None = None

    @property
    def latest(self) -> KeyVersion:
        return self.versions[-1]

    @property
    def deleted(self) -> bool:
        return self.deleted_date is not None


@dataclass
class Principal:
    """An Entra identity: a service principal (client secret) or a managed identity."""

    name: str
    kind: str  # "service-principal" or "managed-identity"
    client_id: str
    object_id: str
    client_secret: str = ""


class Store:
    """In-memory model with SQLite write-through. Not thread-safe: the event loop owns it."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()
        self.meta: dict[str, str] = dict(self._db.execute("SELECT k, v FROM meta"))
        self.keys: dict[str, KeyRecord] = {}
        self._seq = 0
        for name, data, pem in self._db.execute("SELECT name, data, private_pem FROM key_versions"):
            fields = json.loads(data)
            version = KeyVersion(**fields, private_key=keycrypto.from_pem(pem))
            self.keys.setdefault(name, KeyRecord()).versions.append(version)
            self._seq = max(self._seq, version.seq)
        for record in self.keys.values():
            record.versions.sort(key=lambda v: v.seq)
        for name, deleted, purge in self._db.execute("SELECT * FROM deleted_keys"):
            if name in self.keys:
                self.keys[name].deleted_date, self.keys[name].scheduled_purge_date = deleted, purge
        self.custom_roles: dict[str, rbac.RoleDefinition] = {
            guid: rbac.RoleDefinition(**json.loads(data))
            for guid, data in self._db.execute("SELECT guid, data FROM role_definitions")}
        self.assignments: dict[str, rbac.RoleAssignment] = {
            name: rbac.RoleAssignment(**json.loads(data))
            for name, data in self._db.execute("SELECT name, data FROM role_assignments")}
        self.principals: dict[str, Principal] = {
            oid: Principal(**json.loads(data)) for oid, data in self._db.execute("SELECT * FROM principals")}
        # RBAC decisions by (object id, action, scope), dropped whenever a role or an assignment
        # changes: the sign path then pays one dict lookup, not a scan of every assignment.
        self._decisions: dict[tuple[str, str, str], bool] = {}

    # -- first start ---------------------------------------------------------------------------

    @property
    def initialized(self) -> bool:
        return "tenant_id" in self.meta

    @property
    def recoverable_days(self) -> int:
        return int(self.meta.get("recoverable_days", DEFAULT_RECOVERABLE_DAYS))

    def initialize(self, hsm_name: str, scenario: str, recoverable_days: int = DEFAULT_RECOVERABLE_DAYS) -> None:
        """Create the tenant, the principals and the scenario's role assignments, once per state dir."""
        self.set_meta(tenant_id=str(uuid.uuid4()), hsm_name=hsm_name, scenario=scenario,
                      recoverable_days=str(recoverable_days),
                      admin_secret=secrets.token_urlsafe(24), identity_header=secrets.token_urlsafe(24),
                      msi_secret=secrets.token_urlsafe(24))
        for name in SERVICE_PRINCIPALS:
            self.put_principal(Principal(name, "service-principal", str(uuid.uuid4()), str(uuid.uuid4()),
                                         secrets.token_urlsafe(30)))
        for name in MANAGED_IDENTITIES:
            self.put_principal(Principal(name, "managed-identity", str(uuid.uuid4()), str(uuid.uuid4())))
        admin = self.principal_named("admin").object_id
        self.assign("/", admin, rbac.ADMINISTRATOR)
        self.assign("/", admin, rbac.CRYPTO_OFFICER)
        if scenario == "empty":
            return
        self.assign("/keys", self.principal_named("keygen").object_id, rbac.CRYPTO_USER)
        servers = [self.principal_named(n).object_id for n in ("tls-offload", *MANAGED_IDENTITIES)]
        if scenario == "permissive":
            for oid in servers:
                self.assign("/keys", oid, rbac.CRYPTO_USER)
            return
        read_role = rbac.RoleDefinition(str(uuid.uuid4()), rbac.TLS_READ_ROLE, [rbac.PREFIX + "keys/read/action"],
                                        description="Grant Read access to keys")
        self.put_role(read_role)
        for oid in servers:
            self.assign("/keys", oid, read_role.guid)

    def set_meta(self, **values: str) -> None:
        with self._lock:
            for k, v in values.items():
                self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (k, v))
                self.meta[k] = v

    # -- principals ----------------------------------------------------------------------------

    def put_principal(self, principal: Principal) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO principals VALUES (?, ?)",
                             (principal.object_id, json.dumps(asdict(principal))))
        self.principals[principal.object_id] = principal

    def principal_named(self, name: str) -> Principal:
        return next(p for p in self.principals.values() if p.name == name)

    def principal_by_client_id(self, client_id: str) -> Principal | None:
        return next((p for p in self.principals.values() if p.client_id == client_id.lower()), None)

    # -- keys ----------------------------------------------------------------------------------

    def find(self, name: str) -> KeyRecord | None:
        return self.keys.get(name.lower())

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def add_version(self, version: KeyVersion) -> None:
        with self._lock:
            self._db.execute("INSERT INTO key_versions VALUES (?, ?, ?, ?)",
                             (version.name.lower(), version.version, json.dumps(version.record()),
                              keycrypto.to_pem(version.private_key)))
        self.keys.setdefault(version.name.lower(), KeyRecord()).versions.append(version)

    def save_version(self, version: KeyVersion) -> None:
        with self._lock:
            self._db.execute("UPDATE key_versions SET data = ? WHERE name = ? AND version = ?",
                             (json.dumps(version.record()), version.name.lower(), version.version))

    def soft_delete(self, record: KeyRecord) -> None:
        now = int(time.time())
        record.deleted_date, record.scheduled_purge_date = now, now + self.recoverable_days * 86400
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO deleted_keys VALUES (?, ?, ?)",
                             (record.latest.name.lower(), record.deleted_date, record.scheduled_purge_date))

    def recover(self, record: KeyRecord) -> None:
        record.deleted_date = record.scheduled_purge_date = None
        with self._lock:
            self._db.execute("DELETE FROM deleted_keys WHERE name = ?", (record.latest.name.lower(),))

    def purge(self, record: KeyRecord) -> None:
        name = record.latest.name.lower()
        with self._lock:
            self._db.execute("DELETE FROM deleted_keys WHERE name = ?", (name,))
            self._db.execute("DELETE FROM key_versions WHERE name = ?", (name,))
        del self.keys[name]

    # -- roles ---------------------------------------------------------------------------------

    def allows(self, object_id: str, action: str, scope: str) -> bool:
        """Local RBAC's answer for this caller, action and target scope (cached until roles change)."""
        key = (object_id, action, scope)
        decision = self._decisions.get(key)
        if decision is None:
            decision = rbac.is_allowed(self.assignments_of(object_id), self.role_definitions(), action, scope)
            if len(self._decisions) > 65536:
                self._decisions.clear()
            self._decisions[key] = decision
        return decision

    def role_definitions(self) -> dict[str, rbac.RoleDefinition]:
        return {**rbac.BUILTIN_ROLES, **self.custom_roles}

    def put_role(self, role: rbac.RoleDefinition) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO role_definitions VALUES (?, ?)",
                             (role.guid, json.dumps(asdict(role))))
        self.custom_roles[role.guid] = role
        self._decisions.clear()

    def delete_role(self, guid: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM role_definitions WHERE guid = ?", (guid,))
        del self.custom_roles[guid]
        self._decisions.clear()

    def assign(self, scope: str, principal_id: str, role_guid: str, name: str | None = None) -> rbac.RoleAssignment:
        assignment = rbac.RoleAssignment(name or str(uuid.uuid4()), scope, principal_id,
                                         rbac.DEFINITION_ID_PREFIX + role_guid)
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO role_assignments VALUES (?, ?)",
                             (assignment.name.lower(), json.dumps(asdict(assignment))))
        self.assignments[assignment.name.lower()] = assignment
        self._decisions.clear()
        return assignment

    def unassign(self, name: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM role_assignments WHERE name = ?", (name.lower(),))
        del self.assignments[name.lower()]
        self._decisions.clear()

    def assignments_of(self, object_id: str) -> list[rbac.RoleAssignment]:
        return [a for a in self.assignments.values() if a.principal_id.lower() == object_id.lower()]
