"""Logging as the official `log` section describes it, on plain Python `logging`.

`SendToFile` writes `MHSM-PKCS11-<pid>-<YYYYMMDD>-<HHMMSS>.log` in `directory`, one file per process
(a forked worker opens its own); `SendToStdOut` / `SendToStdErr` write to the streams;
`IncludeProcessId` / `IncludeThreadId` add ids to each line. Secrets, tokens and PINs never appear,
whatever the flags say: a filter scrubs every record (`IncludePINs` is ignored on purpose).

Errors also go to stderr as one line each, whatever the other flags say (the extension flag
`SendErrorsToStdErr: false` turns that off): nginx, HAProxy and Apache send a module's stderr to
their error log, and a PKCS#11 host passes on nothing but a return code, so without this line an
operator would read "Function failed" and nothing more. Until a configuration is read (a missing or
invalid one is itself such an error), this is the only handler.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from pathlib import Path

from .config import Log

ROOT = "mhsm"
# `extra=` of a record whose text the front end already handed to the host (OpenSSL's error queue,
# which nginx, HAProxy and Apache print): the stderr line for errors skips it, so it is said once.
HOST_HAS_IT = {"host_has_it": True}
REPEAT_AFTER = 10.0
# What differs between two tellings of one error (Entra ID's trace and correlation ids, timestamps).
VARYING = re.compile(r"[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}|\d{4}-\d\d-\d\d[ T][\d:.]+Z?")
# JWTs, bearer headers, form-encoded secrets and PIN-carried secrets (`<client-id>:<secret>`).
SECRET_PATTERNS = [
    re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"),
    re.compile(r"(?i)(bearer\s+)[^\s\"',]+"),
    re.compile(r"(?i)((?:client_secret|secret|password|pin|pin-value|access_token)[\"']?\s*[=:]\s*[\"']?)[^\s\"'&,;]+"),
]
_secrets: set[str] = set()
_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Scrub this exact string from every log record from now on."""
    if value and len(value) >= 4:
        with _lock:
            _secrets.add(value)


def scrub(text: str) -> str:
    for secret in list(_secrets):
        text = text.replace(secret, "***")
    for pattern in SECRET_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + "***", text)
    return text


class _Scrubber(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = scrub(record.getMessage()), None
        if record.exc_info:
            record.exc_text = scrub(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


class _OneLine(logging.Formatter):
    """`<logger>: <message>[: <exception>]` on one line: what a host's error log can take."""

    def format(self, record: logging.LogRecord) -> str:
        text = f"{record.name}: {record.getMessage()}"
        if record.exc_text:  # the scrubbed traceback (see _Scrubber): its last line names the exception
            text += ": " + record.exc_text.strip().splitlines()[-1]
        return " ".join(text.split())


class _ForHost(logging.Filter):
    """What the host's error log gets: not what the front end already handed to the host, and not
    the same line again (ids and times aside) within REPEAT_AFTER seconds: libp11 tries a failing
    call twice, and a worker would say it at every handshake of an outage."""

    def __init__(self) -> None:
        super().__init__()
        self._said: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "host_has_it", False):
            return False
        # No lock (a fork could copy it held): two threads racing here at worst both say the line.
        now, text = time.monotonic(), VARYING.sub("", record.getMessage())
        if now - self._said.get(text, -REPEAT_AFTER) < REPEAT_AFTER:
            return False
        self._said = {t: at for t, at in self._said.items() if now - at < REPEAT_AFTER} | {text: now}
        return True


class _PerProcessFile(logging.Handler):
    """A file per process, opened lazily so a forked child writes its own file, never the parent's."""

    def __init__(self, directory: str, close_after_write: bool) -> None:
        super().__init__()
        self._directory = Path(directory)
        self._close_after_write = close_after_write
        self._pid = -1
        self._path: Path | None = None
        self._stream = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if self._pid != os.getpid():
                self._pid, self._stream = os.getpid(), None
                stamp = time.strftime("%Y%m%d-%H%M%S")
                self._path = self._directory / f"MHSM-PKCS11-{self._pid}-{stamp}.log"
            if self._stream is None:
                self._directory.mkdir(parents=True, exist_ok=True)
                self._stream = open(self._path, "a", encoding="utf-8")  # type: ignore[arg-type]
            self._stream.write(self.format(record) + "\n")
            self._stream.flush()
            if self._close_after_write:
                self._stream.close()
                self._stream = None
        except OSError:
            self.handleError(record)


def configure(settings: Log) -> logging.Logger:
    """Install the handlers the `log` section asks for on the `mhsm` logger (idempotent)."""
    logger = logging.getLogger(ROOT)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.setLevel(logging.DEBUG if settings.function_level_trace else getattr(logging, settings.level.upper()))
    logger.propagate = False
    ids = ("pid=%(process)d " if settings.include_process_id else "") + \
          ("tid=%(thread)d " if settings.include_thread_id else "")
    formatter = logging.Formatter(f"%(asctime)s {ids}%(levelname)s %(name)s: %(message)s")
    handlers: list[logging.Handler] = []
    if settings.send_to_file:
        handlers.append(_PerProcessFile(settings.directory, settings.close_file_after_write))
    if settings.send_to_stdout:
        handlers.append(logging.StreamHandler(sys.stdout))
    if settings.send_to_stderr:
        handlers.append(logging.StreamHandler(sys.stderr))
    for handler in handlers:
        handler.setFormatter(formatter)
    if settings.send_errors_to_stderr and not settings.send_to_stderr:
        errors = logging.StreamHandler(sys.stderr)
        errors.setLevel(logging.ERROR)
        errors.setFormatter(_OneLine())
        errors.addFilter(_ForHost())
        handlers.append(errors)
    if not handlers:
        handlers.append(logging.NullHandler())
    for handler in handlers:
        handler.addFilter(_Scrubber())
        logger.addHandler(handler)
    # azure-identity (azure-core) and msal log through their own loggers: send them where ours go, scrubbed,
    # instead of Python's last-resort stderr handler.
    for name in ("azure", "msal"):
        library_logger = logging.getLogger(name)
        library_logger.setLevel(logging.DEBUG if settings.function_level_trace else logging.ERROR)
        library_logger.propagate = False
        for handler in list(library_logger.handlers):
            library_logger.removeHandler(handler)
        for handler in handlers:
            library_logger.addHandler(handler)
    return logger


configure(Log())  # until a configuration is read: errors to stderr, nothing else
