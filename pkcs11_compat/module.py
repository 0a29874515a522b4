"""PKCS#11 state: the library per process, slots, sessions, login, and the calls on Python values.

`entry.py` turns C arguments into the calls here and results back into C. Every method either
returns or raises `CKRError`; core errors are mapped in `errors.py`. Locks: `Module.lock` guards the
session table and login state and is never held across an HSM call; each session's lock serialises
the operations on that session (two threads on one session wait for each other, as PKCS#11 asks
of the application anyway).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from mhsm_core.errors import MhsmError
from mhsm_core.hsm import Hsm, Library
from mhsm_core.keys import HsmKey

from . import objects, templates
from .ck import CKRError, lib
from .mechanisms import MECHANISMS, Mechanism, Operation
from .objects import PRIVATE, PUBLIC, SESSION_TAG, ObjectRef

log = logging.getLogger("mhsm.pkcs11")
VERSION = (0, 1)


@dataclass
class Session:
    handle: int
    slot_id: int
    read_write: bool
    lock: threading.RLock = field(default_factory=threading.RLock)
    found: list[int] | None = None  # an active C_FindObjects result, handed out in order
    sign: Operation | None = None
    verify: Operation | None = None
    objects: list[HsmKey] = field(default_factory=list)  # session objects (CKA_TOKEN false) it made


class Module:
    """One per process image; a forked child's first C_Initialize starts a fresh one on the same
    library (config, credentials and CA stay as the parent read them)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.pid: int | None = None  # the pid that initialised; None: not initialised
        self.library: Library | None = None
        self.sessions: dict[int, Session] = {}
        self.logged_in: set[int] = set()
        self.handles = objects.Handles()
        self._session_numbers = itertools.count(1)
        self.instance = ""  # names this initialisation in the tag of the session objects it makes

    # -- general -----------------------------------------------------------------------------------

    def initialize(self) -> None:
        with self.lock:
            pid = os.getpid()
            if self.pid == pid:
                raise CKRError(lib.CKR_CRYPTOKI_ALREADY_INITIALIZED)
            if self.library is None or self.library.pid == pid:
                # First start, or a restart in the same process: read the configuration again. A
                # forked child keeps the parent's: it may no longer be allowed to read the files.
                self.library = Library.load()
            # A forked child drops the parent's sessions without deleting their session objects:
            # they are the parent's, which goes on using them.
            self.sessions.clear()
            self.logged_in.clear()
            self.pid = pid
            self.instance = f"{socket.gethostname()}:{pid}:{uuid.uuid4().hex[:12]}"

    def finalize(self) -> None:
        with self.lock:
            self.loaded()
            ended = list(self.sessions.values())
            self.sessions.clear()
            self.logged_in.clear()
            self.pid = None
        self._destroy_session_objects(ended)

    def loaded(self) -> Library:
        """The loaded library, if C_Initialize ran in this process."""
        if self.pid != os.getpid() or self.library is None:
            raise CKRError(lib.CKR_CRYPTOKI_NOT_INITIALIZED)
        return self.library

    # -- slots and tokens --------------------------------------------------------------------------

    def slot_ids(self) -> list[int]:
        return sorted(self.loaded().hsms)

    def hsm(self, slot_id: int) -> Hsm:
        found = self.loaded().hsms.get(slot_id)
        if found is None:
            raise CKRError(lib.CKR_SLOT_ID_INVALID, f"no slot {slot_id} (tokens[].slotid in the configuration)")
        return found

    def token_serial(self, slot_id: int) -> str:
        """16 characters that identify the HSM, stable across processes (for tools and URIs)."""
        return hashlib.sha256(self.hsm(slot_id).token.base_url.encode()).hexdigest()[:16]

    def session_counts(self, slot_id: int) -> tuple[int, int]:
        with self.lock:
            mine = [s for s in self.sessions.values() if s.slot_id == slot_id]
            return len(mine), sum(s.read_write for s in mine)

    # -- sessions ----------------------------------------------------------------------------------

    def open_session(self, slot_id: int, flags: int) -> int:
        self.hsm(slot_id)
        if not flags & lib.CKF_SERIAL_SESSION:
            raise CKRError(lib.CKR_SESSION_PARALLEL_NOT_SUPPORTED)
        with self.lock:
            handle = next(self._session_numbers)
            self.sessions[handle] = Session(handle, slot_id, bool(flags & lib.CKF_RW_SESSION))
            return handle

    def session(self, handle: int) -> Session:
        self.loaded()
        found = self.sessions.get(handle)
        if found is None:
            raise CKRError(lib.CKR_SESSION_HANDLE_INVALID, f"no session {handle}")
        return found

    def close_session(self, handle: int) -> None:
        with self.lock:
            session = self.session(handle)
            del self.sessions[handle]
            self._logout_if_last(session.slot_id)
        self._destroy_session_objects([session])

    def close_all_sessions(self, slot_id: int) -> None:
        self.hsm(slot_id)
        with self.lock:
            ended = [s for s in self.sessions.values() if s.slot_id == slot_id]
            for session in ended:
                del self.sessions[session.handle]
            self._logout_if_last(slot_id)
        self._destroy_session_objects(ended)

    def _destroy_session_objects(self, ended: list[Session]) -> None:
        """PKCS#11: a session object lives until its session ends. Its HSM key is deleted and purged
        (outside the module lock: these are HSM calls); a failure is logged with the key's name and
        never fails the close, which has happened."""
        library = self.library
        for session in ended:
            for key in session.objects:
                try:
                    assert library is not None  # sessions exist only while a library is loaded
                    library.hsms[session.slot_id].keys.destroy(key)
                    log.info("session %d closed: deleted and purged its session key %s", session.handle, key.name)
                except MhsmError as exc:
                    log.warning("session %d closed: its session key %s could not be removed from the HSM (%s); "
                                "delete and purge it by hand", session.handle, key.name, exc)
            session.objects.clear()

    def _visible(self, key: HsmKey) -> bool:
        """Token objects, and the session objects of this initialisation (not another process's)."""
        owner = key.tags.get(SESSION_TAG)
        return owner is None or owner == self.instance

    def _logout_if_last(self, slot_id: int) -> None:
        """PKCS#11: closing an application's last session on a token logs it out."""
        if slot_id in self.logged_in and not any(s.slot_id == slot_id for s in self.sessions.values()):
            self.logged_in.discard(slot_id)
            self.hsm(slot_id).logout()

    def session_state(self, session: Session) -> int:
        user = session.slot_id in self.logged_in
        if session.read_write:
            return lib.CKS_RW_USER_FUNCTIONS if user else lib.CKS_RW_PUBLIC_SESSION
        return lib.CKS_RO_USER_FUNCTIONS if user else lib.CKS_RO_PUBLIC_SESSION

    def login(self, handle: int, user_type: int, pin: str) -> None:
        session = self.session(handle)
        if user_type == lib.CKU_CONTEXT_SPECIFIC:
            raise CKRError(lib.CKR_OPERATION_NOT_INITIALIZED, "no key here needs a context-specific login")
        if user_type != lib.CKU_USER:
            raise CKRError(lib.CKR_USER_TYPE_INVALID, "only the normal user (CKU_USER) logs in to a Managed HSM")
        with self.lock:
            if session.slot_id in self.logged_in:
                raise CKRError(lib.CKR_USER_ALREADY_LOGGED_IN)
            hsm = self.hsm(session.slot_id)
            if not hsm.login(pin):
                log.warning("C_Login: the PIN is not <client-id>:<client-secret>; it is ignored and the "
                            "environment's service principal or the managed identity is used")
            self.logged_in.add(session.slot_id)
        if pin and ":" in pin:
            try:  # a PIN that carries a principal is proven now, so a wrong secret is CKR_PIN_INCORRECT
                hsm.tokens.get()
            except MhsmError as exc:
                with self.lock:
                    self.logged_in.discard(session.slot_id)
                    hsm.logout()
                raise CKRError(lib.CKR_PIN_INCORRECT, f"C_Login: the PIN's service principal got no token: {exc}")

    def logout(self, handle: int) -> None:
        session = self.session(handle)
        with self.lock:
            if session.slot_id not in self.logged_in:
                raise CKRError(lib.CKR_USER_NOT_LOGGED_IN)
            self.logged_in.discard(session.slot_id)
            self.hsm(session.slot_id).logout()

    # -- objects -----------------------------------------------------------------------------------

    def _object(self, session: Session, handle: int) -> tuple[ObjectRef, HsmKey]:
        ref = self.handles.ref(handle)
        if ref.slot_id != session.slot_id:
            raise CKRError(lib.CKR_OBJECT_HANDLE_INVALID, f"object {handle} is on another slot")
        key = self.hsm(ref.slot_id).keys.get(ref.key_name)
        if not self._visible(key):
            raise CKRError(lib.CKR_OBJECT_HANDLE_INVALID, f"object {handle} is another application's session object")
        return ref, key

    def object_attributes(self, handle: int, object_handle: int) -> dict[int, Any]:
        session = self.session(handle)
        ref, key = self._object(session, object_handle)
        return objects.attributes(key, ref.cls)

    def find_init(self, handle: int, template: dict[int, Any] | None) -> None:
        """Start a search; `template` None matches nothing (it asked one attribute for two values)."""
        session = self.session(handle)
        with session.lock:
            if session.found is not None:
                raise CKRError(lib.CKR_OPERATION_ACTIVE, "C_FindObjectsFinal was not called")
            if template is None:
                session.found = []
                return
            classes = [c for c in (PRIVATE, PUBLIC) if template.get(lib.CKA_CLASS, c) == c]
            found: list[int] = []
            store = self.hsm(session.slot_id).keys
            key_type = {lib.CKK_RSA: "RSA", lib.CKK_EC: "EC"}.get(template.get(lib.CKA_KEY_TYPE, -1))
            if lib.CKA_KEY_TYPE in template and key_type is None:
                classes = []
            for cls in classes:
                side = "private" if cls == PRIVATE else "public"
                for key in store.find(label=template.get(lib.CKA_LABEL), key_id=template.get(lib.CKA_ID),
                                      kty=key_type, side=side):
                    if not self._visible(key):
                        continue
                    values = objects.attributes(key, cls)
                    if all(values.get(t) == v for t, v in template.items()):
                        found.append(self.handles.handle(ObjectRef(session.slot_id, key.name, cls)))
            session.found = found

    def find_next(self, handle: int, limit: int) -> list[int]:
        session = self.session(handle)
        with session.lock:
            if session.found is None:
                raise CKRError(lib.CKR_OPERATION_NOT_INITIALIZED, "call C_FindObjectsInit first")
            batch, session.found = session.found[:limit], session.found[limit:]
            return batch

    def find_final(self, handle: int) -> None:
        session = self.session(handle)
        with session.lock:
            if session.found is None:
                raise CKRError(lib.CKR_OPERATION_NOT_INITIALIZED, "call C_FindObjectsInit first")
            session.found = None

    def _writable(self, session: Session) -> None:
        """Token objects change in read/write sessions (session objects in any: PKCS#11 §5.6);
        whether the identity may change them is the HSM's call."""
        if not session.read_write:
            raise CKRError(lib.CKR_SESSION_READ_ONLY, "token objects change only in a read/write session")

    def set_attributes(self, handle: int, object_handle: int, template: dict[int, Any]) -> None:
        session = self.session(handle)
        ref, key = self._object(session, object_handle)
        current = objects.attributes(key, ref.cls)
        if current[lib.CKA_TOKEN]:
            self._writable(session)
        if not current[lib.CKA_MODIFIABLE]:
            raise CKRError(lib.CKR_ACTION_PROHIBITED, "the object has CKA_MODIFIABLE false")
        stored = templates.settable(template, current)
        side = (stored, {}) if ref.cls == PRIVATE else ({}, stored)
        self.hsm(ref.slot_id).keys.set_attributes(key, *side)

    @staticmethod
    def keygen_mechanism(mechanism_type: int) -> Mechanism:
        mech = MECHANISMS.get(mechanism_type)
        if mech is None or mech.family != "keygen":
            raise CKRError(lib.CKR_MECHANISM_INVALID, f"mechanism 0x{mechanism_type:x} does not generate key pairs")
        return mech

    def generate_key_pair(self, handle: int, mechanism_type: int, public: dict[int, Any],
                          private: dict[int, Any]) -> tuple[int, int]:
        session = self.session(handle)
        mech = self.keygen_mechanism(mechanism_type)
        token = templates.is_token(public, private)
        if token:
            self._writable(session)
        request = templates.key_request(mech.kty, public, private)
        own_tags = {} if token else {SESSION_TAG: self.instance}
        key = self.hsm(session.slot_id).keys.create(mech.kty, own_tags=own_tags, **request)
        log.info("C_GenerateKeyPair: created %s %s (%s %s) with label %r", "token key" if token else "session key",
                 key.name, key.kty, key.curve or key.size, key.label)
        if not token:
            with self.lock:
                alive = self.sessions.get(handle) is session
                if alive:
                    session.objects.append(key)
            if not alive:  # the session was closed meanwhile: its object ends with it
                self._destroy_session_objects([Session(handle, session.slot_id, False, objects=[key])])
                raise CKRError(lib.CKR_SESSION_CLOSED, "the session was closed while its key was made")
        return (self.handles.handle(ObjectRef(session.slot_id, key.name, PUBLIC)),
                self.handles.handle(ObjectRef(session.slot_id, key.name, PRIVATE)))

    def random(self, handle: int, count: int) -> bytes:
        session = self.session(handle)
        return self.hsm(session.slot_id).keys.random(count) if count else b""

    def seed_random(self, handle: int) -> None:
        """The HSM's generator takes no seed from outside (PKCS#11: CKR_RANDOM_SEED_NOT_SUPPORTED,
        once the session is known to be valid)."""
        self.session(handle)
        raise CKRError(lib.CKR_RANDOM_SEED_NOT_SUPPORTED, "Managed HSM's generator cannot be seeded")

    # -- sign and verify ---------------------------------------------------------------------------

    def operation_init(self, handle: int, kind: str, mechanism_type: int, parameter: Any, parameter_length: int,
                       key_handle: int) -> None:
        session = self.session(handle)
        with session.lock:
            if getattr(session, kind) is not None:
                raise CKRError(lib.CKR_OPERATION_ACTIVE, f"a {kind} operation is already active on this session")
            try:
                ref, key = self._object(session, key_handle)
            except CKRError as exc:
                raise CKRError(lib.CKR_KEY_HANDLE_INVALID, str(exc)) from None
            if kind == "sign" and (ref.cls != PRIVATE or "sign" not in key.key_ops):
                raise CKRError(lib.CKR_KEY_FUNCTION_NOT_PERMITTED, "signing needs a private key with CKA_SIGN")
            if kind == "verify" and "verify" not in key.key_ops and ref.cls == PUBLIC:
                raise CKRError(lib.CKR_KEY_FUNCTION_NOT_PERMITTED, "verifying needs a key with CKA_VERIFY")
            setattr(session, kind, Operation.start(mechanism_type, parameter, parameter_length, key))

    def step(self, handle: int, kind: str, body: Callable[[Session, Operation], bool]) -> None:
        """Run one call of the active operation; it stays active only if `body` says so (a length
        query, CKR_BUFFER_TOO_SMALL, an update). Any error ends it: no session is left wedged."""
        session = self.session(handle)
        with session.lock:
            op = getattr(session, kind)
            if op is None:
                raise CKRError(lib.CKR_OPERATION_NOT_INITIALIZED, f"call C_{kind.capitalize()}Init first")
            keep = False
            try:
                keep = body(session, op)
            finally:
                if not keep:
                    setattr(session, kind, None)

    def sign(self, session: Session, op: Operation, data: bytes | None) -> bytes:
        """The HSM's signature over what the operation collected (and `data`, if single-part)."""
        algorithm, digest = op.hsm_request(op.finish_input(data))
        return self.hsm(session.slot_id).keys.sign(op.key, algorithm, digest)
