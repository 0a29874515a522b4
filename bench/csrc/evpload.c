/*
 * Sign load through OpenSSL with a key the provider loads from a pkcs11: URI, as libssl signs:
 * EVP_DigestSignInit + (PSS padding) + one-shot EVP_DigestSign, per signature.
 *
 *   evpload URI rsa-pss|ecdsa THREADS COUNT|tSECONDS
 */
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/store.h>
#include <string.h>

#include "loadgen.h"

static EVP_PKEY *key;
static int pss;
static const unsigned char message[] = "a TLS handshake transcript stands in here";

static void *worker_setup(int index)
{
    (void)index;
    return key;
}

static int sign_once(void *state)
{
    unsigned char sig[1024];
    size_t len = sizeof(sig);
    EVP_PKEY_CTX *pctx = NULL;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    int ok = md && EVP_DigestSignInit_ex(md, &pctx, "SHA2-256", NULL, NULL, state, NULL) > 0 &&
             (!pss || (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) > 0 &&
                       EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) > 0)) &&
             EVP_DigestSign(md, sig, &len, message, sizeof(message)) > 0;
    EVP_MD_CTX_free(md);
    return ok;
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: evpload URI rsa-pss|ecdsa THREADS COUNT|tSECONDS\n");
        return 2;
    }
    pss = !strcmp(argv[2], "rsa-pss");
    OSSL_STORE_CTX *store = OSSL_STORE_open(argv[1], NULL, NULL, NULL, NULL);
    while (store && !key && !OSSL_STORE_eof(store)) {
        OSSL_STORE_INFO *info = OSSL_STORE_load(store);
        if (info && OSSL_STORE_INFO_get_type(info) == OSSL_STORE_INFO_PKEY)
            key = OSSL_STORE_INFO_get1_PKEY(info);
        OSSL_STORE_INFO_free(info);
    }
    OSSL_STORE_close(store);
    if (!key) {
        fprintf(stderr, "evpload: no private key at %s\n", argv[1]);
        return 1;
    }
    return run_load(atoi(argv[3]), argv[4]);
}
