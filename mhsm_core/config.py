"""`mhsm-pkcs11.conf`, read exactly as the official library writes it, plus our optional extensions.

The file is JSON; the same structure is also accepted as YAML (with comments). Every mistake is
reported with its field path, what was found and what is allowed, and all mistakes are reported at
once. Unknown fields are warnings, so a newer official file still loads. See docs/configuration.md.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

import yaml

from .retry import DEFAULT_MAX_RETRIES

DEFAULT_PATH = "/etc/mhsm-pkcs11.conf"
ENV_VAR = "MHSM_PKCS11_CONF"
HSM_NAME = re.compile(r"^(?!.*--)[0-9a-zA-Z-]{3,24}$")
LOG_LEVELS = ("debug", "info", "warning", "error")
CURL_LEVELS = ("Off", "Error", "Warning", "Info", "Verbose")

T = TypeVar("T")


class ConfigError(ValueError):
    """Every problem found in one file, each naming the field path and the fix."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__(f"{path}: " + "; ".join(problems))


@dataclass(frozen=True)
class Token:
    """One `tokens[]` entry: one Managed HSM, one PKCS#11 slot."""

    slot_id: int
    resource_name: str
    protocol: str = "https://"
    uri: str = "managedhsm.azure.net"
    resource_type: str = "mhsm"
    endpoint: str | None = None  # extension: base URL override

    @property
    def base_url(self) -> str:
        """The HSM's base URL, built as the official library does unless `endpoint` overrides it."""
        if self.endpoint:
            return self.endpoint.rstrip("/")
        return f"{self.protocol}{self.resource_name}.{self.uri}".rstrip("/")


@dataclass(frozen=True)
class Msi:
    enabled: bool = False
    client_id: str = ""
    imds_endpoint: str | None = None  # extension


@dataclass(frozen=True)
class Options:
    disable_tls_authentication: bool = False
    ca_file: str | None = None  # extension
    connect_timeout: float = 5.0  # extension, seconds
    request_timeout: float = 15.0  # extension, seconds per attempt
    max_retries: int = DEFAULT_MAX_RETRIES  # extension; a ceiling, RetryBudget ends a call first
    retry_budget: float = 20.0  # extension, seconds for all attempts of one call
    key_cache_ttl: float = 300.0  # extension, seconds
    negative_cache_ttl: float = 5.0  # extension, seconds


@dataclass(frozen=True)
class Auth:
    authority: str = "https://login.microsoftonline.com"
    tenant_id: str | None = None  # None: learn it from the HSM's 401 challenge


@dataclass(frozen=True)
class Log:
    directory: str = "/var/log/mhsm-pkcs11"
    send_to_file: bool = False
    send_to_stdout: bool = False
    send_to_stderr: bool = False
    include_process_id: bool = False
    include_thread_id: bool = False
    close_file_after_write: bool = False
    function_level_trace: bool = False
    p11_interfaces: bool = False
    curl_level: str = "Off"
    level: str = "info"  # extension
    curl_display_as_hex: bool = False
    send_errors_to_stderr: bool = True  # extension: errors reach the host's error log unless turned off


@dataclass(frozen=True)
class ConnectionCache:
    disable: bool = False
    max_connections: int = 20


@dataclass(frozen=True)
class Config:
    path: str
    tokens: tuple[Token, ...]
    msi: Msi = field(default_factory=Msi)
    options: Options = field(default_factory=Options)
    auth: Auth = field(default_factory=Auth)
    log: Log = field(default_factory=Log)
    connection_cache: ConnectionCache = field(default_factory=ConnectionCache)
    warnings: tuple[str, ...] = ()

    def token(self, slot_id: int) -> Token:
        return next(t for t in self.tokens if t.slot_id == slot_id)


def _describe(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (str, int, float, bool)) or value is None else type(value).__name__


class _Reader:
    """Walks the parsed document with a path, collecting problems and unknown fields."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def section(self, parent: dict[str, Any], name: str, path: str, known: set[str]) -> dict[str, Any]:
        value = parent.get(name, {})
        if not isinstance(value, dict):
            self.problems.append(f"{path}: expected an object, got {_describe(value)}")
            return {}
        self.unknown(value, path, known)
        return value

    def unknown(self, obj: dict[str, Any], path: str, known: set[str]) -> None:
        for name in obj:
            if name not in known:
                self.warnings.append(f"{path}.{name}: unknown field, ignored" if path else f"{name}: unknown field, "
                                     "ignored")

    def get(self, obj: dict[str, Any], name: str, path: str, kind: str, default: T,
            check: Callable[[Any], str | None] | None = None) -> T:
        if name not in obj:
            return default
        value = obj[name]
        expected = {"bool": "true or false", "int": "an integer", "number": "a number", "str": "a string"}[kind]
        ok = {"bool": isinstance(value, bool),
              "int": isinstance(value, int) and not isinstance(value, bool),
              "number": isinstance(value, (int, float)) and not isinstance(value, bool),
              "str": isinstance(value, str)}[kind]
        if not ok:
            self.problems.append(f"{path}.{name}: expected {expected}, got {_describe(value)}")
            return default
        problem = check(value) if check else None
        if problem:
            self.problems.append(f"{path}.{name}: {problem}, got {_describe(value)}")
            return default
        return value


def _https_url(value: str) -> str | None:
    return None if re.fullmatch(r"https://[^\s/]+(/\S*)?", value) else "expected an https:// URL"


def _http_url(value: str) -> str | None:
    return None if re.fullmatch(r"https?://[^\s/]+(/\S*)?", value) else "expected an http:// or https:// URL"


def _positive(value: float) -> str | None:
    return None if value > 0 else "expected a number greater than 0"


def _not_negative(value: float) -> str | None:
    return None if value >= 0 else "expected 0 or more"


def _one_of(allowed: tuple[str, ...], fold: bool = False) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        found = value.lower() if fold else value
        return None if found in [a.lower() if fold else a for a in allowed] else f"expected one of {', '.join(allowed)}"

    return check


def parse(text: str, path: str = "<string>") -> Config:
    """Parse the JSON (or YAML) text of a config file; raise ConfigError listing every problem."""
    try:
        document = json.loads(text)
    except ValueError as json_error:
        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(path, [f"not valid JSON or YAML: {_syntax_error(text, json_error, exc)}"]) from None
    if not isinstance(document, dict):
        raise ConfigError(path, [f"expected a JSON object at the top, got {_describe(document)}"])
    r = _Reader()
    r.unknown(document, "", {"tokens", "msi", "options", "log", "ConnectionCache", "auth"})
    tokens = _tokens(r, document)
    msi_doc = r.section(document, "msi", "msi", {"identityMSI", "MSIClientID", "IMDSEndpoint"})
    msi = Msi(r.get(msi_doc, "identityMSI", "msi", "bool", False), r.get(msi_doc, "MSIClientID", "msi", "str", ""),
              r.get(msi_doc, "IMDSEndpoint", "msi", "str", None, _http_url))
    opt = r.section(document, "options", "options", {
        "DisableTLSAuthentication", "CAFile", "ConnectTimeout", "RequestTimeout", "MaxRetries", "RetryBudget",
        "KeyCacheTTL", "NegativeCacheTTL"})
    ca_file = r.get(opt, "CAFile", "options", "str", None,
                    lambda p: None if os.path.isfile(p) else "expected the path of a readable PEM file")
    options = Options(
        r.get(opt, "DisableTLSAuthentication", "options", "bool", False), ca_file,
        float(r.get(opt, "ConnectTimeout", "options", "number", 5.0, _positive)),
        float(r.get(opt, "RequestTimeout", "options", "number", 15.0, _positive)),
        r.get(opt, "MaxRetries", "options", "int", DEFAULT_MAX_RETRIES,
              lambda v: None if 0 <= v <= 20 else "expected 0..20"),
        float(r.get(opt, "RetryBudget", "options", "number", 20.0, _not_negative)),
        float(r.get(opt, "KeyCacheTTL", "options", "number", 300.0, _not_negative)),
        float(r.get(opt, "NegativeCacheTTL", "options", "number", 5.0, _not_negative)))
    auth_doc = r.section(document, "auth", "auth", {"authority", "tenantId"})
    auth = Auth(r.get(auth_doc, "authority", "auth", "str", Auth.authority, _https_url).rstrip("/"),
                r.get(auth_doc, "tenantId", "auth", "str", None,
                      lambda v: None if re.fullmatch(r"[0-9A-Za-z.-]+", v) else "expected a tenant id or domain"))
    log = _log(r, document)
    cc = r.section(document, "ConnectionCache", "ConnectionCache", {"Disable", "MaxConnections"})
    cache = ConnectionCache(r.get(cc, "Disable", "ConnectionCache", "bool", False),
                            r.get(cc, "MaxConnections", "ConnectionCache", "int", 20,
                                  lambda v: None if 1 <= v <= 1024 else "expected 1..1024"))
    if r.problems:
        raise ConfigError(path, r.problems)
    return Config(path, tokens, msi, options, auth, log, cache, tuple(r.warnings))


def _tokens(r: _Reader, document: dict[str, Any]) -> tuple[Token, ...]:
    raw = document.get("tokens")
    if not isinstance(raw, list) or not raw:
        r.problems.append(f"tokens: expected a non-empty array of HSM entries, got {_describe(raw)}")
        return ()
    tokens: list[Token] = []
    for i, entry in enumerate(raw):
        path = f"tokens[{i}]"
        if not isinstance(entry, dict):
            r.problems.append(f"{path}: expected an object, got {_describe(entry)}")
            continue
        r.unknown(entry, path, {"slotid", "protocol", "uri", "resourceName", "resourceType", "endpoint"})
        if "resourceName" not in entry:
            r.problems.append(f"{path}.resourceName: missing; set it to the Managed HSM's name")
        if "slotid" not in entry:
            r.problems.append(f"{path}.slotid: missing; set it to a slot number such as 0")
        token = Token(
            r.get(entry, "slotid", path, "int", -1, lambda v: None if v >= 0 else "expected 0 or more"),
            r.get(entry, "resourceName", path, "str", "",
                  lambda v: None if HSM_NAME.fullmatch(v) else "expected a Managed HSM name (3-24 characters "
                  "0-9, a-z, A-Z, '-', no '--')"),
            r.get(entry, "protocol", path, "str", "https://",
                  lambda v: None if v == "https://" else 'expected "https://" (TLS is required)'),
            r.get(entry, "uri", path, "str", "managedhsm.azure.net",
                  lambda v: None if re.fullmatch(r"[0-9A-Za-z.-]+", v) else "expected a DNS suffix such as "
                  "managedhsm.azure.net"),
            r.get(entry, "resourceType", path, "str", "mhsm", _one_of(("mhsm",), fold=True)),
            r.get(entry, "endpoint", path, "str", None, _https_url))
        if token.slot_id in [t.slot_id for t in tokens] and token.slot_id >= 0:
            r.problems.append(f"{path}.slotid: slot {token.slot_id} is used twice; give each HSM its own slot id")
        tokens.append(token)
    return tuple(tokens)


def _log(r: _Reader, document: dict[str, Any]) -> Log:
    log = r.section(document, "log", "log", {"directory", "module", "flags", "level"})
    module = r.section(log, "module", "log.module", {"P11Interfaces", "FunctionLevelTrace", "curl"})
    curl = r.section(module, "curl", "log.module.curl", {"Level", "DisplayAsHex"})
    flags = r.section(log, "flags", "log.flags", {
        "CloseFileAfterWrite", "SendToFile", "SendToStdOut", "SendToStdErr", "IncludeProcessId", "IncludeThreadId",
        "IncludePINs", "SendErrorsToStdErr"})
    if r.get(flags, "IncludePINs", "log.flags", "bool", False):
        r.warnings.append("log.flags.IncludePINs: ignored; PINs, secrets and tokens are never logged")

    def flag(name: str) -> bool:
        return r.get(flags, name, "log.flags", "bool", False)

    return Log(
        r.get(log, "directory", "log", "str", Log.directory), flag("SendToFile"), flag("SendToStdOut"),
        flag("SendToStdErr"), flag("IncludeProcessId"), flag("IncludeThreadId"), flag("CloseFileAfterWrite"),
        r.get(module, "FunctionLevelTrace", "log.module", "bool", False),
        r.get(module, "P11Interfaces", "log.module", "bool", False),
        r.get(curl, "Level", "log.module.curl", "str", "Off", _one_of(CURL_LEVELS, fold=True)),
        r.get(log, "level", "log", "str", "info", _one_of(LOG_LEVELS)).lower(),
        curl_display_as_hex=r.get(curl, "DisplayAsHex", "log.module.curl", "bool", False),
        send_errors_to_stderr=r.get(flags, "SendErrorsToStdErr", "log.flags", "bool", True))


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """`explicit`, else `$MHSM_PKCS11_CONF`, else `/etc/mhsm-pkcs11.conf`."""
    return Path(explicit or os.environ.get(ENV_VAR) or DEFAULT_PATH)


def _syntax_error(text: str, json_error: ValueError, yaml_error: yaml.YAMLError) -> str:
    """One line, where the mistake is: the JSON parser's for a JSON-looking file, else YAML's.

    PyYAML's own message spans several lines with a caret drawing; a tool's error is one sentence.
    """
    if text.lstrip().startswith(("{", "[")):
        return str(json_error)
    problem = getattr(yaml_error, "problem", None) or str(yaml_error).splitlines()[0]
    mark = getattr(yaml_error, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def load(explicit: str | os.PathLike[str] | None = None, *, flag: str = "--conf") -> Config:
    """Read and check the file given on the command line (`flag` names the option), else the
    environment's, else the default path."""
    path = config_path(explicit)
    try:
        text = path.read_text()
    except OSError as exc:
        where = flag if explicit else (ENV_VAR if os.environ.get(ENV_VAR) else "the default path")
        raise ConfigError(str(path), [f"cannot read the configuration ({exc.strerror}); set {ENV_VAR} or pass "
                                      f"the file's path (it came from {where})"]) from None
    return parse(text, str(path))
