/*
 * The provider's entry point, algorithm tables, errors and the door into Python.
 *
 * The tables are static and complete from the first query_operation call: libssl caches a
 * provider's algorithms at SSL_CTX_new(), which nginx calls before it loads the key, so nothing
 * here may depend on the HSM or on Python having started (openssl-provider-notes §2 rule 7).
 * Python boots on the first call that needs it (a store open, a PEM-wrapped URI, a signature):
 * in nginx that is the master, before it forks, so workers inherit a ready interpreter.
 */
#include <dlfcn.h>
#include <pthread.h>

static const OSSL_CORE_HANDLE *mhsm_core;
static OSSL_FUNC_core_get_params_fn *core_get_params;
static OSSL_FUNC_core_new_error_fn *core_new_error;
static OSSL_FUNC_core_set_error_debug_fn *core_set_error_debug;
static OSSL_FUNC_core_vset_error_fn *core_vset_error;
static OSSL_FUNC_BIO_gets_fn *core_bio_gets;
static OSSL_FUNC_BIO_write_ex_fn *core_bio_write_ex;
/* From the provider's openssl.cnf section, read once in the process that loads the provider. */
static char *mhsm_conf_path;
static char *mhsm_pin_source;

static __thread int mhsm_in_python; /* this thread is inside Python: refuse to re-enter */
/* A signing thread of async.c: errors go to its request's line, for the job to raise, not to this
 * thread's own error queue, which nobody reads. */
static __thread char *mhsm_error_sink;
static pthread_once_t mhsm_boot_once = PTHREAD_ONCE_INIT;
static int mhsm_booted;

#define MHSM_REASON 1
static const OSSL_ITEM mhsm_reasons[] = {{MHSM_REASON, "mhsm"}, {0, NULL}};

static void mhsm_vraise(const char *fmt, ...)
{
    va_list args;
    if (mhsm_error_sink) {
        va_start(args, fmt);
        vsnprintf(mhsm_error_sink, MHSM_ERROR_LINE, fmt, args);
        va_end(args);
        return;
    }
    if (!core_new_error)
        return;
    core_new_error(mhsm_core);
    core_set_error_debug(mhsm_core, "mhsm.so", 0, "mhsm");
    va_start(args, fmt);
    core_vset_error(mhsm_core, MHSM_REASON, fmt, args);
    va_end(args);
}

/* Also called from Python (declared in the cdef): the message becomes one OpenSSL error line. */
static void mhsm_raise(const char *message)
{
    mhsm_vraise("%s", message);
}

static void mhsm_boot(void)
{
    mhsm_in_python = 1; /* imports may touch libcrypto; nothing may come back in meanwhile */
    if (embed_start()) {
        embed_guard guard;
        embed_enter(&guard);
        mhsm_booted = py_boot(mhsm_conf_path ? mhsm_conf_path : "", mhsm_pin_source ? mhsm_pin_source : "");
        embed_leave(&guard);
    }
    mhsm_in_python = 0;
}

/* 1: the caller may call Python now (and must call mhsm_python_leave); 0: an error was raised. */
static int mhsm_python_enter(embed_guard *guard)
{
    if (mhsm_in_python) {
        /* e.g. the core's own TLS to the HSM fetching one of our algorithms: answer "not here" */
        mhsm_raise("refused a call made from inside the provider's own Python code");
        return 0;
    }
    if (ASYNC_get_current_job()) {
        /* an ASYNC job's fiber stack is too small for Python: only signatures run there, off it */
        mhsm_raise("refused to run Python inside an OpenSSL ASYNC job (only signatures are made there)");
        return 0;
    }
    pthread_once(&mhsm_boot_once, mhsm_boot);
    if (!mhsm_booted) {
        mhsm_raise("the provider's embedded Python did not start (the reason is on standard error)");
        return 0;
    }
    embed_enter(guard);
    mhsm_in_python = 1;
    return 1;
}

static void mhsm_python_leave(embed_guard *guard)
{
    mhsm_in_python = 0;
    embed_leave(guard);
}

/* -- keys shared by keymgmt, signature, store and codecs ------------------------------------ */

static mhsm_key *mhsm_key_new(void)
{
    mhsm_key *key = calloc(1, sizeof(*key));
    if (key)
        key->refs = 1;
    return key;
}

static mhsm_key *mhsm_key_ref(mhsm_key *key)
{
    if (key)
        __atomic_add_fetch(&key->refs, 1, __ATOMIC_RELAXED);
    return key;
}

static void mhsm_key_free(void *keydata)
{
    mhsm_key *key = keydata;
    if (key && __atomic_sub_fetch(&key->refs, 1, __ATOMIC_ACQ_REL) == 0) {
        EVP_PKEY_free(key->pub);
        free(key);
    }
}

/* The key a Python reference names, with its public half decoded by the default provider. */
static mhsm_key *mhsm_key_from_handle(long handle)
{
    unsigned char der[4096];
    size_t der_len = sizeof(der);
    int is_private = 0, ok;
    embed_guard guard;
    if (!mhsm_python_enter(&guard))
        return NULL;
    ok = py_key_public(handle, der, &der_len, &is_private);
    mhsm_python_leave(&guard);
    if (!ok)
        return NULL;
    const unsigned char *p = der;
    EVP_PKEY *pub = d2i_PUBKEY_ex(NULL, &p, (long)der_len, NULL, MHSM_DEFAULT_PROPQ);
    mhsm_key *key = pub ? mhsm_key_new() : NULL;
    if (!key) {
        EVP_PKEY_free(pub);
        mhsm_raise("cannot decode the public key the HSM returned (is the default provider active?)");
        return NULL;
    }
    key->handle = handle;
    key->is_private = is_private;
    key->pub = pub;
    return key;
}

#include "keymgmt.c"
#include "async.c"
#include "signature.c"
#include "store.c"
#include "codec.c"

/* -- the provider itself ------------------------------------------------------------------- */

static const OSSL_ALGORITHM mhsm_keymgmt_algs[] = {
    {"RSA:rsaEncryption:1.2.840.113549.1.1.1", MHSM_PROPS, mhsm_rsa_keymgmt, "Managed HSM RSA keys"},
    {"RSA-PSS:RSASSA-PSS:1.2.840.113549.1.1.10", MHSM_PROPS, mhsm_rsapss_keymgmt, "Managed HSM RSA keys (PSS)"},
    {"EC:id-ecPublicKey:1.2.840.10045.2.1", MHSM_PROPS, mhsm_ec_keymgmt, "Managed HSM EC keys"},
    {NULL, NULL, NULL, NULL}};

static const OSSL_ALGORITHM mhsm_signature_algs[] = {
    {"RSA:rsaEncryption:1.2.840.113549.1.1.1", MHSM_PROPS, mhsm_rsa_signature, "RSA signatures in the HSM"},
    {"ECDSA", MHSM_PROPS, mhsm_ecdsa_signature, "ECDSA signatures in the HSM"},
    {NULL, NULL, NULL, NULL}};

static const OSSL_ALGORITHM mhsm_store_algs[] = {
    {"pkcs11", MHSM_PROPS, mhsm_store, "RFC 7512 pkcs11: URIs naming Managed HSM keys"},
    {NULL, NULL, NULL, NULL}};

static const OSSL_ALGORITHM mhsm_decoder_algs[] = {
    {"RSA:rsaEncryption:1.2.840.113549.1.1.1", MHSM_PROPS ",input=pem", mhsm_uri_decoder, "PEM-wrapped pkcs11: URI"},
    {"EC:id-ecPublicKey:1.2.840.10045.2.1", MHSM_PROPS ",input=pem", mhsm_uri_decoder, "PEM-wrapped pkcs11: URI"},
    {NULL, NULL, NULL, NULL}};

#define MHSM_SPKI(name, out, fns) {name, MHSM_PROPS ",output=" out ",structure=SubjectPublicKeyInfo", fns, NULL}
static const OSSL_ALGORITHM mhsm_encoder_algs[] = {
    MHSM_SPKI("RSA:rsaEncryption:1.2.840.113549.1.1.1", "der", mhsm_rsa_der_encoder),
    MHSM_SPKI("RSA:rsaEncryption:1.2.840.113549.1.1.1", "pem", mhsm_rsa_pem_encoder),
    MHSM_SPKI("RSA-PSS:RSASSA-PSS:1.2.840.113549.1.1.10", "der", mhsm_rsapss_der_encoder),
    MHSM_SPKI("RSA-PSS:RSASSA-PSS:1.2.840.113549.1.1.10", "pem", mhsm_rsapss_pem_encoder),
    MHSM_SPKI("EC:id-ecPublicKey:1.2.840.10045.2.1", "der", mhsm_ec_der_encoder),
    MHSM_SPKI("EC:id-ecPublicKey:1.2.840.10045.2.1", "pem", mhsm_ec_pem_encoder),
    {NULL, NULL, NULL, NULL}};

static const OSSL_ALGORITHM *mhsm_query_operation(void *provctx, int operation_id, int *no_cache)
{
    (void)provctx;
    *no_cache = 0;
    switch (operation_id) {
    case OSSL_OP_KEYMGMT:
        return mhsm_keymgmt_algs;
    case OSSL_OP_SIGNATURE:
        return mhsm_signature_algs;
    case OSSL_OP_STORE:
        return mhsm_store_algs;
    case OSSL_OP_DECODER:
        return mhsm_decoder_algs;
    case OSSL_OP_ENCODER:
        return mhsm_encoder_algs;
    }
    return NULL;
}

static const OSSL_PARAM *mhsm_gettable_params(void *provctx)
{
    static const OSSL_PARAM list[] = {
        OSSL_PARAM_utf8_ptr(OSSL_PROV_PARAM_NAME, NULL, 0), OSSL_PARAM_utf8_ptr(OSSL_PROV_PARAM_VERSION, NULL, 0),
        OSSL_PARAM_utf8_ptr(OSSL_PROV_PARAM_BUILDINFO, NULL, 0), OSSL_PARAM_int(OSSL_PROV_PARAM_STATUS, NULL),
        OSSL_PARAM_END};
    (void)provctx;
    return list;
}

static int mhsm_get_params(void *provctx, OSSL_PARAM params[])
{
    OSSL_PARAM *p;
    (void)provctx;
    if ((p = OSSL_PARAM_locate(params, OSSL_PROV_PARAM_NAME)) && !OSSL_PARAM_set_utf8_ptr(p, "mhsm-tls-offload"))
        return 0;
    if ((p = OSSL_PARAM_locate(params, OSSL_PROV_PARAM_VERSION)) && !OSSL_PARAM_set_utf8_ptr(p, MHSM_VERSION))
        return 0;
    if ((p = OSSL_PARAM_locate(params, OSSL_PROV_PARAM_BUILDINFO)) &&
        !OSSL_PARAM_set_utf8_ptr(p, "Python " EMBED_PYVER " core, built for OpenSSL " OPENSSL_VERSION_STR))
        return 0;
    if ((p = OSSL_PARAM_locate(params, OSSL_PROV_PARAM_STATUS)) && !OSSL_PARAM_set_int(p, 1))
        return 0;
    return 1;
}

static const OSSL_ITEM *mhsm_reason_strings(void *provctx)
{
    (void)provctx;
    return mhsm_reasons;
}

/* Teardown touches neither the network nor Python (notes §2 rule 9): the host is exiting. */
static void mhsm_teardown(void *provctx)
{
    (void)provctx;
}

static const OSSL_DISPATCH mhsm_provider_functions[] = {
    {OSSL_FUNC_PROVIDER_TEARDOWN, (void (*)(void))mhsm_teardown},
    {OSSL_FUNC_PROVIDER_GETTABLE_PARAMS, (void (*)(void))mhsm_gettable_params},
    {OSSL_FUNC_PROVIDER_GET_PARAMS, (void (*)(void))mhsm_get_params},
    {OSSL_FUNC_PROVIDER_QUERY_OPERATION, (void (*)(void))mhsm_query_operation},
    {OSSL_FUNC_PROVIDER_GET_REASON_STRINGS, (void (*)(void))mhsm_reason_strings},
    {0, NULL}};

/* The provider section's own settings (see conf/openssl-mhsm.cnf); the first load keeps them. */
static void mhsm_read_settings(const OSSL_CORE_HANDLE *handle)
{
    char *conf = NULL, *pin_source = NULL;
    OSSL_PARAM params[] = {OSSL_PARAM_utf8_ptr("mhsm-conf", &conf, 0),
                           OSSL_PARAM_utf8_ptr("mhsm-pin-source", &pin_source, 0), OSSL_PARAM_END};
    if (!core_get_params || !core_get_params(handle, params))
        return;
    if (conf && !mhsm_conf_path)
        mhsm_conf_path = strdup(conf);
    if (pin_source && !mhsm_pin_source)
        mhsm_pin_source = strdup(pin_source);
}

static const OSSL_DISPATCH mhsm_inert_functions[] = {
    {OSSL_FUNC_PROVIDER_TEARDOWN, (void (*)(void))mhsm_teardown},
    {OSSL_FUNC_PROVIDER_GETTABLE_PARAMS, (void (*)(void))mhsm_gettable_params},
    {OSSL_FUNC_PROVIDER_GET_PARAMS, (void (*)(void))mhsm_get_params},
    {0, NULL}};

/*
 * Is this core another copy of libcrypto than the one the host uses? The Python wheels of
 * cryptography link their own OpenSSL statically, and it reads OPENSSL_CONF too, so importing the
 * core loads this provider a second time into that copy. There it stays inert: its core functions
 * must not replace the host's, and the core's own cryptography must never reach the HSM.
 */
static int mhsm_foreign_core(const OSSL_DISPATCH *in)
{
    Dl_info ours, theirs;
    for (; in && in->function_id; in++)
        if (in->function_id == OSSL_FUNC_CORE_NEW_ERROR)
            return !dladdr((void *)in->function, &theirs) || !dladdr((void *)&OSSL_PARAM_locate, &ours) ||
                   theirs.dli_fbase != ours.dli_fbase;
    return 1;
}

int OSSL_provider_init(const OSSL_CORE_HANDLE *handle, const OSSL_DISPATCH *in, const OSSL_DISPATCH **out,
                       void **provctx);
int OSSL_provider_init(const OSSL_CORE_HANDLE *handle, const OSSL_DISPATCH *in, const OSSL_DISPATCH **out,
                       void **provctx)
{
    *provctx = (void *)handle;
    if (mhsm_foreign_core(in)) {
        *out = mhsm_inert_functions;
        return 1;
    }
    for (; in && in->function_id; in++) {
        switch (in->function_id) {
        case OSSL_FUNC_CORE_GET_PARAMS:
            core_get_params = OSSL_FUNC_core_get_params(in);
            break;
        case OSSL_FUNC_CORE_NEW_ERROR:
            core_new_error = OSSL_FUNC_core_new_error(in);
            break;
        case OSSL_FUNC_CORE_SET_ERROR_DEBUG:
            core_set_error_debug = OSSL_FUNC_core_set_error_debug(in);
            break;
        case OSSL_FUNC_CORE_VSET_ERROR:
            core_vset_error = OSSL_FUNC_core_vset_error(in);
            break;
        case OSSL_FUNC_BIO_GETS:
            core_bio_gets = OSSL_FUNC_BIO_gets(in);
            break;
        case OSSL_FUNC_BIO_WRITE_EX:
            core_bio_write_ex = OSSL_FUNC_BIO_write_ex(in);
            break;
        }
    }
    if (!core_new_error || !core_set_error_debug || !core_vset_error || !core_bio_gets || !core_bio_write_ex)
        return 0;
    if (!mhsm_core)
        mhsm_core = handle;
    mhsm_read_settings(handle);
    *out = mhsm_provider_functions;
    return 1;
}
