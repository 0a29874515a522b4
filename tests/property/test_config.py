"""The configuration reader (mhsm_core/config.py), property-based: every document either loads to a
Config that, written back as the official JSON, loads to the same Config, or is refused with a
ConfigError whose every problem is one line that starts with the field at fault."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from mhsm_core import config

FIELD = re.compile(r"^(tokens(\[\d+\](\.(slotid|resourceName|protocol|uri|resourceType|endpoint))?)?"
                   r"|msi(\.\w+)?|options(\.\w+)?|auth(\.\w+)?|log(\.module(\.curl)?|\.flags)?(\.\w+)?"
                   r"|ConnectionCache(\.\w+)?): ")
DOCUMENT_LEVEL = ("not valid JSON or YAML: ", "expected a JSON object at the top")

anything = st.none() | st.booleans() | st.integers(-5, 5000) | st.floats(allow_nan=True) | st.text(max_size=12)


def mostly(valid: st.SearchStrategy[Any], invalid: st.SearchStrategy[Any] = anything) -> st.SearchStrategy[Any]:
    """A field's value: right about 19 times in 20, so that whole documents load often enough."""
    return st.integers(0, 19).flatmap(lambda roll: valid if roll else invalid)


def section(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """A section with any subset of its fields, sometimes an unknown one (a warning, not an error)."""
    return st.fixed_dictionaries({}, optional={**fields, "Unknown": anything})


names = st.from_regex(r"[a-zA-Z0-9]{1,3}(-?[a-zA-Z0-9]{1,6}){0,3}", fullmatch=True)
flag = mostly(st.booleans())
seconds = mostly(st.integers(1, 40) | st.floats(0.001, 100), st.integers(-3, 0) | anything)
token = st.fixed_dictionaries({
    "slotid": mostly(st.integers(0, 6), st.integers(-2, -1) | anything),
    "resourceName": mostly(names, st.sampled_from(["ab", "a--b", "x" * 25]) | anything)}, optional={
                 "Unknown": anything,
                 "protocol": mostly(st.just("https://"), st.just("http://") | anything),
                 "uri": mostly(st.sampled_from(["managedhsm.azure.net", "managedhsm.azure.cn"]), st.just("a b")),
                 "resourceType": mostly(st.sampled_from(["mhsm", "MHSM"]), st.just("vault") | anything),
                 "endpoint": mostly(st.sampled_from(["https://127.0.0.1:8443/", "https://hsm.example/x"]),
                                    st.just("ftp://x") | anything)})
documents = st.fixed_dictionaries({"tokens": mostly(st.lists(token, min_size=1, max_size=3), st.lists(token, max_size=0)
                                                    | anything)}, optional={
    "msi": section({"identityMSI": flag, "MSIClientID": mostly(st.text(max_size=8)),
                    "IMDSEndpoint": mostly(st.just("http://169.254.169.254"), st.just("x") | anything)}),
    "options": section({name: seconds for name in ("ConnectTimeout", "RequestTimeout", "RetryBudget", "KeyCacheTTL",
                                                   "NegativeCacheTTL")}
                       | {"MaxRetries": mostly(st.integers(0, 20), st.integers(21, 99) | anything),
                          "DisableTLSAuthentication": flag,
                          "CAFile": mostly(st.just("/etc/hostname"), st.just("/no/such/file") | anything)}),
    "auth": section({"authority": mostly(st.just("https://login.example/"), st.just("http://x") | anything),
                     "tenantId": mostly(st.just("contoso.onmicrosoft.com"), st.just("a b") | anything)}),
    "log": section({"directory": mostly(st.text(max_size=8)),
                    "level": mostly(st.sampled_from(["debug", "info", "warning", "error"]), st.just("INFO") | anything),
                    "module": section({"FunctionLevelTrace": flag, "P11Interfaces": flag,
                                       "curl": section({"Level": mostly(st.sampled_from(["Off", "verbose"]),
                                                                        st.just("loud") | anything),
                                                        "DisplayAsHex": flag})}),
                    "flags": section({f: flag for f in ("CloseFileAfterWrite", "SendToFile", "SendToStdOut",
                                                         "SendToStdErr", "IncludeProcessId", "IncludeThreadId",
                                                         "IncludePINs")})}),
    "ConnectionCache": section({"Disable": flag, "MaxConnections": mostly(st.integers(1, 1024),
                                                                          st.integers(-1, 0) | anything)}),
})


def document_of(c: config.Config) -> dict[str, Any]:
    """The official JSON document for a Config, every field written out."""
    tokens = [{"slotid": t.slot_id, "resourceName": t.resource_name, "protocol": t.protocol, "uri": t.uri,
               "resourceType": t.resource_type, **({"endpoint": t.endpoint} if t.endpoint else {})} for t in c.tokens]
    o, log = c.options, c.log
    return {
        "tokens": tokens,
        "msi": {"identityMSI": c.msi.enabled, "MSIClientID": c.msi.client_id,
                **({"IMDSEndpoint": c.msi.imds_endpoint} if c.msi.imds_endpoint is not None else {})},
        "options": {"DisableTLSAuthentication": o.disable_tls_authentication, "ConnectTimeout": o.connect_timeout,
                    "RequestTimeout": o.request_timeout, "MaxRetries": o.max_retries, "RetryBudget": o.retry_budget,
                    "KeyCacheTTL": o.key_cache_ttl, "NegativeCacheTTL": o.negative_cache_ttl,
                    **({"CAFile": o.ca_file} if o.ca_file else {})},
        "auth": {"authority": c.auth.authority, **({"tenantId": c.auth.tenant_id} if c.auth.tenant_id else {})},
        "log": {"directory": log.directory, "level": log.level,
                "module": {"FunctionLevelTrace": log.function_level_trace, "P11Interfaces": log.p11_interfaces,
                           "curl": {"Level": log.curl_level, "DisplayAsHex": log.curl_display_as_hex}},
                "flags": {"SendToFile": log.send_to_file, "SendToStdOut": log.send_to_stdout,
                          "SendToStdErr": log.send_to_stderr, "IncludeProcessId": log.include_process_id,
                          "IncludeThreadId": log.include_thread_id, "CloseFileAfterWrite": log.close_file_after_write}},
        "ConnectionCache": {"Disable": c.connection_cache.disable, "MaxConnections": c.connection_cache.max_connections},
    }


def check(text: str) -> None:
    try:
        loaded = config.parse(text, "conf")
    except config.ConfigError as exc:
        assert exc.problems, "a refusal names at least one problem"
        for problem in exc.problems:
            assert "\n" not in problem and "\r" not in problem, problem
            assert FIELD.match(problem) or problem.startswith(DOCUMENT_LEVEL), problem
        return
    again = config.parse(json.dumps(document_of(loaded)), "conf")
    assert dataclasses.replace(again, warnings=()) == dataclasses.replace(loaded, warnings=()), text


@given(documents)
def test_documents(document: dict[str, Any]) -> None:
    check(json.dumps(document))


@given(documents)
def test_documents_as_yaml(document: dict[str, Any]) -> None:
    import yaml

    check(yaml.safe_dump(document))


@given(st.text(max_size=80))
def test_any_text(text: str) -> None:
    check(text)
