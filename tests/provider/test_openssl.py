"""The Debian 12 `openssl` CLI (OpenSSL 3.0) with HSM keys through the provider.

Every signature is verified by a second `openssl` that does not load the provider
(OPENSSL_CONF=/dev/null) against the public key exported through the provider, which must equal
the HSM key's public part; the emulator must have counted one sign per signature.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.conftest import start_emulator
from tests.nginx import free_port
from tests.provider.conftest import BIN, Hsm, make_hsm, openssl_env, provider_cnf, short_conf

PLAIN = {"OPENSSL_CONF": "/dev/null", "PATH": "/usr/bin:/bin"}  # an openssl without the provider
DIGESTS = ("sha256", "sha384", "sha512")


class Ossl:
    """The openssl CLI with the provider loaded through the sample openssl-mhsm.cnf."""

    def __init__(self, hsm: Hsm, directory: Path, cnf: Path | None = None) -> None:
        self.hsm, self.dir = hsm, directory
        self.env = openssl_env(hsm, cnf or provider_cnf(hsm, directory / "openssl.cnf"))

    def run(self, *args: str, ok: bool = True, plain: bool = False) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["openssl", *args], env=PLAIN if plain else self.env, capture_output=True, text=True,
                                timeout=120, cwd=self.dir)
        if ok:
            assert result.returncode == 0, f"openssl {' '.join(args)}: {result.stdout}{result.stderr}"
        return result

    def uri(self, kind: str, extra: str = "") -> str:
        return f"pkcs11:object={self.hsm.labels[kind]}{extra}"

    def public_pem(self, kind: str) -> Path:
        """The public key exported through the provider; it must be the HSM key's."""
        path = self.dir / f"{kind}.pub"
        self.run("pkey", "-in", self.uri(kind), "-pubout", "-out", str(path))
        exported = serialization.load_pem_public_key(path.read_bytes())
        assert exported.public_numbers() == self.hsm.public_keys[kind].public_numbers()
        return path


@pytest.fixture
def ossl(hsm: Hsm, tmp_path: Path) -> Ossl:
    return Ossl(hsm, tmp_path)


def test_storeutl_lists_every_object_by_uri(ossl: Ossl, hsm: Hsm) -> None:
    listing = ossl.run("storeutl", "pkcs11:").stdout
    for label in hsm.labels.values():
        for kind in ("private", "public"):  # the id is the one the key's name carries
            assert re.search(rf"Name: pkcs11:token=localhsm;object={label};id=(%[0-9A-F]{{2}}){{16}};type={kind}\n",
                             listing), listing
    narrowed = ossl.run("storeutl", "pkcs11:type=public").stdout
    assert "type=private" not in narrowed and f"object={hsm.labels['EC']};id=" in narrowed
    certs = ossl.run("storeutl", "-certs", ossl.uri("RSA", ";type=cert"))
    assert "Total found: 0" in certs.stdout + certs.stderr


@pytest.mark.parametrize("kind", ["RSA", "EC"])
def test_pkey_pubout(ossl: Ossl, kind: str) -> None:
    ossl.public_pem(kind)  # asserts it is the HSM key's public part


@pytest.mark.parametrize("kind, options", [
    *[("RSA", ["-pkeyopt", f"digest:{d}"]) for d in DIGESTS],
    *[("RSA", ["-pkeyopt", f"digest:{d}", "-pkeyopt", "rsa_padding_mode:pss", "-pkeyopt", "rsa_pss_saltlen:digest"])
      for d in DIGESTS],
    ("EC", []),
])
def test_pkeyutl_sign(ossl: Ossl, hsm: Hsm, kind: str, options: list[str]) -> None:
    public = ossl.public_pem(kind)
    digest_name = next((o.split(":")[1] for o in options if o.startswith("digest:")), "sha256")
    (ossl.dir / "digest").write_bytes(hashlib.new(digest_name, b"pkeyutl").digest())
    before = hsm.signs()
    ossl.run("pkeyutl", "-sign", "-inkey", ossl.uri(kind), *options, "-in", "digest", "-out", "sig")
    assert hsm.signs() - before == 1, "one HSM sign per signature"
    out = ossl.run("pkeyutl", "-verify", "-pubin", "-inkey", str(public), *options, "-in", "digest", "-sigfile", "sig",
                   plain=True)
    assert "Signature Verified Successfully" in out.stdout


@pytest.mark.parametrize("kind, sigopts", [("RSA", []), ("RSA", ["rsa_padding_mode:pss", "rsa_pss_saltlen:digest"]),
                                           ("RSA", ["rsa_padding_mode:pss"]), ("EC", [])])
@pytest.mark.parametrize("digest", DIGESTS)
def test_dgst_sign_verify(ossl: Ossl, hsm: Hsm, kind: str, sigopts: list[str], digest: str) -> None:
    public = ossl.public_pem(kind)
    (ossl.dir / "data").write_bytes(b"signed by a key that never leaves the HSM\n" * 1000)
    options = [x for opt in sigopts for x in ("-sigopt", opt)]
    before = hsm.signs()
    ossl.run("dgst", f"-{digest}", *options, "-sign", ossl.uri(kind), "-out", "sig", "data")
    assert hsm.signs() - before == 1
    verify = [x for opt in sigopts if "saltlen" not in opt for x in ("-sigopt", opt)]
    assert "Verified OK" in ossl.run("dgst", f"-{digest}", *verify, "-verify", str(public), "-signature", "sig", "data",
                                     plain=True).stdout


def test_pss_salt_max_is_refused_clearly(ossl: Ossl) -> None:
    (ossl.dir / "data").write_text("x")
    result = ossl.run("dgst", "-sha256", "-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:max", "-sign",
                      ossl.uri("RSA"), "-out", "sig", "data", ok=False)
    assert result.returncode == 1 and "PSS salt length max: Managed HSM signs with salt = digest length" in result.stderr


@pytest.mark.parametrize("kind, sigopts", [("RSA", []), ("EC", []),
                                           ("RSA", ["rsa_padding_mode:pss", "rsa_pss_saltlen:digest"])])
def test_req_x509_self_signed(ossl: Ossl, hsm: Hsm, kind: str, sigopts: list[str]) -> None:
    options = [x for opt in sigopts for x in ("-sigopt", opt)]
    before = hsm.signs()
    ossl.run("req", "-new", "-x509", "-key", ossl.uri(kind), *options, "-subj", "/CN=localhost", "-days", "2",
             "-out", "self.crt")
    assert hsm.signs() - before == 1
    assert "self.crt: OK" in ossl.run("verify", "-CAfile", "self.crt", "self.crt", plain=True).stdout
    cert = x509.load_pem_x509_certificate((ossl.dir / "self.crt").read_bytes())
    assert cert.public_key().public_numbers() == hsm.public_keys[kind].public_numbers()
    if sigopts:
        assert cert.signature_algorithm_oid == x509.oid.SignatureAlgorithmOID.RSASSA_PSS


@pytest.mark.parametrize("kind", ["RSA", "EC"])
def test_req_csr_and_x509_signkey(ossl: Ossl, hsm: Hsm, kind: str) -> None:
    ossl.run("req", "-new", "-key", ossl.uri(kind), "-subj", "/CN=csr.example.com", "-out", "req.csr")
    assert "verify OK" in ossl.run("req", "-in", "req.csr", "-verify", "-noout", plain=True).stderr
    csr = x509.load_pem_x509_csr((ossl.dir / "req.csr").read_bytes())
    assert csr.public_key().public_numbers() == hsm.public_keys[kind].public_numbers()
    ossl.run("req", "-new", "-x509", "-key", ossl.uri(kind), "-subj", "/CN=first", "-out", "first.crt")
    ossl.run("x509", "-in", "first.crt", "-signkey", ossl.uri(kind), "-days", "3", "-out", "resigned.crt")
    assert "resigned.crt: OK" in ossl.run("verify", "-CAfile", "resigned.crt", "resigned.crt", plain=True).stdout


def s_client(port: int, ca: Path, *args: str) -> str:
    result = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
                             "-CAfile", str(ca), "-verify_return_error", *args], input="Q\n", env=PLAIN,
                            capture_output=True, text=True, timeout=60)
    return result.stdout + result.stderr


@pytest.mark.parametrize("kind, client", [
    ("RSA", ["-tls1_3", "-sigalgs", "rsa_pss_rsae_sha256"]), ("EC", ["-tls1_3"]),
    ("RSA", ["-tls1_2", "-sigalgs", "RSA+SHA256"]), ("RSA", ["-tls1_2", "-sigalgs", "rsa_pss_rsae_sha256"]),
    ("EC", ["-tls1_2", "-sigalgs", "ECDSA+SHA256"]),
])
def test_s_server_handshakes(ossl: Ossl, hsm: Hsm, kind: str, client: list[str]) -> None:
    ossl.run("req", "-new", "-x509", "-key", ossl.uri(kind), "-subj", "/CN=localhost", "-out", "server.crt")
    port = free_port()
    server = subprocess.Popen(["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-key", ossl.uri(kind),
                               "-cert", "server.crt", "-naccept", "3", "-quiet"], env=ossl.env, cwd=ossl.dir,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:  # counts as one accept
            assert server.poll() is None and time.monotonic() < deadline, server.stderr.read() if server.stderr else ""
            time.sleep(0.05)
        before = hsm.signs()
        for _ in range(2):
            out = s_client(port, ossl.dir / "server.crt", *client)
            assert "Verify return code: 0 (ok)" in out, out
            assert ("TLSv1.3" if "-tls1_3" in client else "TLSv1.2") in out
        assert hsm.signs() - before == 2
    finally:
        server.kill()
        server.wait()


def test_private_key_never_exported(ossl: Ossl, tmp_path: Path) -> None:
    for extra in ([], ["-traditional"]):
        result = ossl.run("pkey", "-in", ossl.uri("RSA"), *extra, "-out", "private.pem", ok=False)
        assert result.returncode == 1, result.stdout
        assert "the private part of a Managed HSM key never leaves the HSM" in result.stderr
        assert not (ossl.dir / "private.pem").exists() or "PRIVATE" not in (ossl.dir / "private.pem").read_text()
    source = tmp_path / "todata.c"
    source.write_text(r'''
#include <openssl/store.h>
#include <openssl/evp.h>
#include <stdio.h>
int main(int argc, char **argv) {
    EVP_PKEY *pk = NULL;
    OSSL_STORE_CTX *st = OSSL_STORE_open(argv[1], NULL, NULL, NULL, NULL);
    while (st && !OSSL_STORE_eof(st)) {
        OSSL_STORE_INFO *info = OSSL_STORE_load(st);
        if (info && OSSL_STORE_INFO_get_type(info) == OSSL_STORE_INFO_PKEY && !pk)
            pk = OSSL_STORE_INFO_get1_PKEY(info);
        OSSL_STORE_INFO_free(info);
    }
    OSSL_STORE_close(st);
    OSSL_PARAM *params = NULL;
    int keypair = pk ? EVP_PKEY_todata(pk, EVP_PKEY_KEYPAIR, &params) : -1;
    int public = pk ? EVP_PKEY_todata(pk, EVP_PKEY_PUBLIC_KEY, &params) : -1;
    printf("loaded=%d keypair=%d public=%d\n", pk != NULL, keypair, public);
    return 0;
}
''')
    subprocess.run(["gcc", "-Wall", "-o", str(tmp_path / "todata"), str(source), "-lcrypto"], check=True, timeout=60)
    for kind in ("RSA", "EC"):
        out = subprocess.run([str(tmp_path / "todata"), ossl.uri(kind)], env=ossl.env, capture_output=True, text=True,
                             timeout=60).stdout
        assert out.strip() == "loaded=1 keypair=0 public=1", out


@pytest.mark.parametrize("uri, expected", [
    ("pkcs11:object=no-such-key", r"no key labelled 'no-such-key' in localhsm"),
    ("pkcs11:object={label};colour=blue", r"unknown attribute 'colour' in the path"),
    ("pkcs11:object={label}?pin-value=not-a-principal", r"is not '<client-id>:<client-secret>'"),
    ("pkcs11:object={label}?pin-value=00000000-0000-0000-0000-000000000000:wrong", r"could not get a token"),
    ("pkcs11:object={label};type=private;slot-id=7", r"no configured HSM matches"),
])
def test_bad_uris_say_why(ossl: Ossl, hsm: Hsm, uri: str, expected: str) -> None:
    (ossl.dir / "data").write_text("x")
    result = ossl.run("dgst", "-sha256", "-sign", uri.format(label=hsm.labels["RSA"]), "-out", "sig", "data", ok=False)
    assert result.returncode == 1
    [line] = [line for line in result.stderr.splitlines() if ":mhsm:" in line]
    assert re.search(expected, line), result.stderr


@pytest.mark.parametrize("order", ["mhsm-first", "no-preference"])
def test_provider_order_does_not_matter(hsm: Hsm, tmp_path: Path, order: str) -> None:
    """Listed before the default provider, or without `?provider=default`: signatures, certificates and
    a handshake still work (the default provider still does everything that is not an HSM key)."""
    text = provider_cnf(hsm, tmp_path / "sample.cnf").read_text()
    if order == "mhsm-first":
        text = text.replace("default = default_sect\nmhsm = mhsm_sect", "mhsm = mhsm_sect\ndefault = default_sect")
        assert "mhsm = mhsm_sect\ndefault = default_sect" in text
    else:
        text = text.replace("default_properties = ?provider=default", "")
    (tmp_path / "openssl.cnf").write_text(text)
    ossl = Ossl(hsm, tmp_path, tmp_path / "openssl.cnf")
    public = ossl.public_pem("EC")
    (tmp_path / "data").write_text("order")
    ossl.run("dgst", "-sha256", "-sign", ossl.uri("RSA"), "-out", "sig", "data")
    ossl.run("dgst", "-sha256", "-sign", ossl.uri("EC"), "-out", "ecsig", "data")
    assert "Verified OK" in ossl.run("dgst", "-sha256", "-verify", str(public), "-signature", "ecsig", "data").stdout
    ossl.run("req", "-new", "-x509", "-key", ossl.uri("RSA"), "-subj", "/CN=localhost", "-out", "server.crt")
    local_key = tmp_path / "local.pem"  # the default provider's own work, with ours loaded
    ossl.run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(local_key))
    ossl.run("pkey", "-in", str(local_key), "-pubout")


def test_uri2pem_file_and_refusals(hsm: Hsm, tmp_path: Path) -> None:
    tool = str(BIN / "mhsm_p11_uri2pem")
    subprocess.run([tool, f"pkcs11:object={hsm.labels['RSA']}", "-o", str(tmp_path / "k.pem")], check=True, timeout=60)
    assert (tmp_path / "k.pem").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "k.pem").read_text().startswith("-----BEGIN MHSM PKCS11 URI-----\n")
    subprocess.run([tool, "pkcs11:object=x?pin-value=a:b", "-o", str(tmp_path / "p.pem")], check=True, timeout=60)
    assert (tmp_path / "p.pem").stat().st_mode & 0o777 == 0o600, "a file with a secret is for its owner only"
    for bad, message in (("pkcs11:type=private", "names no key"), ("pkcs11:object=x;colour=red", "unknown attribute 'colour'"),
                         ("pkcs11:object=x;type=public", "needs the private key")):
        result = subprocess.run([tool, bad], capture_output=True, text=True, timeout=60)
        assert result.returncode == 1 and message in result.stderr and result.stdout == "", result.stderr


def test_pem_wrapped_uri_through_pem_read(hsm: Hsm, tmp_path: Path) -> None:
    """What nginx < 1.29, HAProxy and Apache do with a key file: PEM_read_bio_PrivateKey, then sign."""
    ossl = Ossl(hsm, tmp_path)
    pem = tmp_path / "key-uri.pem"
    subprocess.run([str(BIN / "mhsm_p11_uri2pem"), ossl.uri("EC"), "-o", str(pem)], check=True, timeout=60)
    source = tmp_path / "pemsign.c"
    source.write_text(r'''
#include <openssl/pem.h>
#include <stdio.h>
int main(int argc, char **argv) {
    BIO *in = BIO_new_file(argv[1], "r");
    EVP_PKEY *pk = in ? PEM_read_bio_PrivateKey(in, NULL, NULL, NULL) : NULL;
    unsigned char sig[256];
    size_t len = sizeof(sig);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (!pk || EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, pk) <= 0 ||
        EVP_DigestSign(md, sig, &len, (const unsigned char *)"pem", 3) <= 0)
        return 1;
    fwrite(sig, 1, len, stdout);
    return 0;
}
''')
    subprocess.run(["gcc", "-Wall", "-o", str(tmp_path / "pemsign"), str(source), "-lcrypto"], check=True, timeout=60)
    before = hsm.signs()
    signature = subprocess.run([str(tmp_path / "pemsign"), str(pem)], env=ossl.env, capture_output=True,
                               timeout=60, check=True).stdout
    assert hsm.signs() - before == 1
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    hsm.public_keys["EC"].verify(signature, b"pem", ec.ECDSA(hashes.SHA256()))


@pytest.mark.parametrize("fault", ["refused", "silent"])
def test_hsm_endpoint_unreachable_fails_fast(hsm: Hsm, tmp_path: Path, fault: str) -> None:
    """Entra ID answers but the HSM does not: nothing listens, or something accepts and never
    answers. The configured timeouts bound the wait, and the one line names the HSM's endpoint."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        if fault == "silent":
            silent.listen(16)  # the kernel completes TCP handshakes; nobody speaks TLS
        endpoint = f"https://127.0.0.1:{silent.getsockname()[1]}"
        document = json.loads(Path(hsm.env["MHSM_PKCS11_CONF"]).read_text())
        document["tokens"][0]["endpoint"] = endpoint + "/"
        document["options"].update(ConnectTimeout=1, RequestTimeout=2, MaxRetries=1, RetryBudget=2)
        (tmp_path / "mhsm-pkcs11.conf").write_text(json.dumps(document))
        broken = replace(hsm, env={**hsm.env, "MHSM_PKCS11_CONF": str(tmp_path / "mhsm-pkcs11.conf")})
        ossl = Ossl(broken, tmp_path)
        (tmp_path / "data").write_text("x")
        began = time.monotonic()
        result = ossl.run("dgst", "-sha256", "-sign", ossl.uri("EC"), "-out", "sig", "data", ok=False)
        elapsed = time.monotonic() - began
    [line] = [line for line in result.stderr.splitlines() if ":mhsm:" in line]
    assert result.returncode == 1 and f"cannot reach the HSM at {endpoint}" in line, result.stderr
    assert elapsed < 20, f"took {elapsed:.1f} s with RequestTimeout=2, RetryBudget=2"


def test_hsm_down_then_back(tmp_path: Path) -> None:
    """The HSM stops: a signature fails within the configured budget with one line that says the
    HSM cannot be reached (exit 1, not a crash); it comes back on the same port: signing works."""
    emulator = start_emulator(tmp_path / "state")
    hsm = make_hsm(emulator, tmp_path / "mhsm-pkcs11.conf", "down")
    port = int(emulator.url.rsplit(":", 1)[1].strip("/"))
    ossl = Ossl(hsm, tmp_path)
    (tmp_path / "data").write_text("down")
    ossl.run("dgst", "-sha256", "-sign", ossl.uri("EC"), "-out", "sig", "data")
    emulator.stop()
    began = time.monotonic()
    result = ossl.run("dgst", "-sha256", "-sign", ossl.uri("EC"), "-out", "sig", "data", ok=False)
    assert result.returncode == 1 and time.monotonic() - began < 60
    assert re.search(r"refused|unreachable|connect", result.stderr, re.IGNORECASE), result.stderr
    emulator = start_emulator(tmp_path / "state", "--port", str(port))
    try:
        short_conf(emulator, tmp_path / "mhsm-pkcs11.conf")
        hsm.emulator = emulator
        before = hsm.signs()
        ossl.run("dgst", "-sha256", "-sign", ossl.uri("EC"), "-out", "sig", "data")
        assert hsm.signs() - before == 1
    finally:
        emulator.stop()
