/*
 * Shared declarations of the provider's C shim (every .c file in provider/csrc, all #included into the one
 * cffi-generated translation unit by provider/build.py, after pkcs11_compat/csrc/embed.c).
 *
 * The C side translates between OpenSSL's dispatch tables and a handful of Python calls; every
 * decision (which key a URI names, which HSM algorithm a request needs) is made in Python. The
 * C-side state is immutable after provider init (the core handle and a few core function
 * pointers, all of which stay valid in a forked child), plus async.c's signing pool, which
 * records its process and is never used by a forked child.
 */
#include <openssl/async.h>
#include <openssl/core.h>
#include <openssl/core_dispatch.h>
#include <openssl/core_names.h>
#include <openssl/core_object.h>
#include <openssl/encoder.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/pem.h>
#include <openssl/store.h>
#include <openssl/x509.h>
#include <stdlib.h>
#include <string.h>

/* Every algorithm carries it, so nothing but an explicit query or our own keys reaches us. */
#define MHSM_PROPS "provider=mhsm"
/* Where the shim itself asks libcrypto for help (public keys, hashing, parameter parsing). */
#define MHSM_DEFAULT_PROPQ "provider=default"
#define MHSM_PEM_LABEL "MHSM PKCS11 URI"
/* The longest error line kept for a signature made on a pool thread (async.c). */
#define MHSM_ERROR_LINE 512

/* What Python hands back for one store object (declared to cffi in provider/build.py too). */
struct mhsm_object {
    int kind;            /* MHSM_OBJECT_KEY or MHSM_OBJECT_NAME */
    long handle;         /* key: the Python-side key reference */
    char data_type[16];  /* key: "RSA" or "EC" */
    char uri[1024];      /* name: the object's pkcs11: URI */
    char desc[256];      /* name: one line for people */
};
#define MHSM_OBJECT_KEY 1
#define MHSM_OBJECT_NAME 2

/* One signature request, as OpenSSL described it (the shadow context parsed the parameters). */
struct mhsm_sign_request {
    const char *digest;  /* "" when the caller set none (raw PKCS#1 input) */
    int pad_mode;        /* RSA_PKCS1_PADDING (1), RSA_PKCS1_PSS_PADDING (6), ...; 0 for EC */
    int saltlen;         /* as OpenSSL encodes it: >= 0, or -1 digest, -2 max, -3 auto, -4 auto-digest-max */
    const char *mgf1;    /* "" when not PSS */
    const unsigned char *data;
    size_t data_len;
};

/* An HSM key (handle != 0) or public material imported for a comparison (handle == 0). */
typedef struct {
    int refs;
    long handle;
    int is_private;
    EVP_PKEY *pub; /* the public half, held by the default provider */
} mhsm_key;

/* The Python side, defined by cffi after this preamble (see provider/entry.py). */
static int py_boot(const char *conf, const char *pin_source);
static long py_store_open(const char *uri);
static int py_store_next(long store, int expect, struct mhsm_object *out);
static void py_store_close(long store);
static int py_key_public(long handle, unsigned char *der, size_t *der_len, int *is_private);
static int py_sign(long handle, struct mhsm_sign_request *request, unsigned char *sig, size_t *sig_len);
static long py_decode(const unsigned char *pem, size_t pem_len, char *data_type, size_t data_type_size);

/* Defined in provider.c; used by every operation. */
static void mhsm_raise(const char *message);
static void mhsm_vraise(const char *fmt, ...);
static int mhsm_python_enter(embed_guard *guard);
static void mhsm_python_leave(embed_guard *guard);
static mhsm_key *mhsm_key_from_handle(long handle);
static mhsm_key *mhsm_key_ref(mhsm_key *key);
static void mhsm_key_free(void *keydata);
