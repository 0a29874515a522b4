/*
 * SIGNATURE for RSA (PKCS#1 v1.5, PSS) and ECDSA over HSM keys.
 *
 * Each operation keeps a "shadow": a default-provider verify context over the key's public half.
 * Every parameter the caller sets goes to it, so pad-mode and saltlen arrive in whichever form
 * libssl (int, "digest") or the CLI (strings) uses, are checked exactly as OpenSSL checks them,
 * and come back as plain values when the HSM is asked to sign; it also answers algorithm-id for
 * X.509 and CSR signing. Hashing is local (default provider) and the HSM signs the digest at the
 * end, so dupctx is a plain copy that cannot fail for a reason of ours (3.0's DigestSignFinal
 * needs it: notes §2 rule 5). Verification never leaves the process: the shadow does it.
 */

typedef struct {
    mhsm_key *key;
    int ec;
    int signing;
    EVP_PKEY_CTX *shadow; /* owned, unless `verify` owns it */
    EVP_MD_CTX *hash;     /* digest_sign: the running digest */
    EVP_MD_CTX *verify;   /* digest_verify: the whole verification, in the default provider */
} mhsm_sig;

static void *mhsm_rsa_sig_new(void *provctx, const char *propq)
{
    (void)provctx, (void)propq;
    return calloc(1, sizeof(mhsm_sig));
}

static void *mhsm_ec_sig_new(void *provctx, const char *propq)
{
    mhsm_sig *ctx = mhsm_rsa_sig_new(provctx, propq);
    if (ctx)
        ctx->ec = 1;
    return ctx;
}

static void mhsm_sig_reset(mhsm_sig *ctx)
{
    if (ctx->verify)
        EVP_MD_CTX_free(ctx->verify); /* frees its pkey context, our shadow */
    else
        EVP_PKEY_CTX_free(ctx->shadow);
    EVP_MD_CTX_free(ctx->hash);
    ctx->verify = NULL, ctx->shadow = NULL, ctx->hash = NULL;
}

static void mhsm_sig_free(void *vctx)
{
    mhsm_sig *ctx = vctx;
    if (!ctx)
        return;
    mhsm_sig_reset(ctx);
    mhsm_key_free(ctx->key);
    free(ctx);
}

static void *mhsm_sig_dup(void *vctx)
{
    mhsm_sig *from = vctx, *ctx = calloc(1, sizeof(*ctx));
    if (!ctx)
        return NULL;
    *ctx = *from;
    ctx->key = mhsm_key_ref(from->key);
    ctx->shadow = NULL, ctx->hash = NULL, ctx->verify = NULL;
    int ok = 1;
    if (from->verify) {
        ok = (ctx->verify = EVP_MD_CTX_new()) && EVP_MD_CTX_copy_ex(ctx->verify, from->verify);
        ctx->shadow = ok ? EVP_MD_CTX_get_pkey_ctx(ctx->verify) : NULL;
    } else if (from->shadow) {
        ok = (ctx->shadow = EVP_PKEY_CTX_dup(from->shadow)) != NULL;
    }
    if (ok && from->hash)
        ok = (ctx->hash = EVP_MD_CTX_new()) && EVP_MD_CTX_copy_ex(ctx->hash, from->hash);
    if (!ok) {
        mhsm_sig_free(ctx);
        return NULL;
    }
    return ctx;
}

/* A default digest when the caller names none (the key's own default, as OpenSSL chooses it). */
static const char *mhsm_digest_or_default(mhsm_key *key, const char *mdname, char *buf, size_t size)
{
    if (mdname && *mdname)
        return mdname;
    return EVP_PKEY_get_default_digest_name(key->pub, buf, size) > 0 ? buf : "SHA256";
}

static int mhsm_sig_init(mhsm_sig *ctx, void *keydata, const char *mdname, int digesting, int signing,
                         const OSSL_PARAM params[])
{
    mhsm_key *key = keydata ? keydata : ctx->key; /* a NULL key re-initialises with the same one */
    char fallback[64];
    if (!key || !key->pub)
        return 0;
    if (signing && (!key->handle || !key->is_private)) {
        mhsm_raise("this key is not a Managed HSM private key; mhsm signs only with its own keys");
        return 0;
    }
    mhsm_sig_reset(ctx);
    if (key != ctx->key) {
        mhsm_key_free(ctx->key);
        ctx->key = mhsm_key_ref(key);
    }
    ctx->signing = signing;
    if (digesting)
        mdname = mhsm_digest_or_default(key, mdname, fallback, sizeof(fallback));
    if (digesting && !signing) {
        ctx->verify = EVP_MD_CTX_new();
        return ctx->verify && EVP_DigestVerifyInit_ex(ctx->verify, &ctx->shadow, mdname, NULL, MHSM_DEFAULT_PROPQ,
                                                      key->pub, params) > 0;
    }
    ctx->shadow = EVP_PKEY_CTX_new_from_pkey(NULL, key->pub, MHSM_DEFAULT_PROPQ);
    if (!ctx->shadow || EVP_PKEY_verify_init(ctx->shadow) <= 0)
        return 0;
    if (mdname) {
        OSSL_PARAM md[] = {OSSL_PARAM_construct_utf8_string(OSSL_SIGNATURE_PARAM_DIGEST, (char *)mdname, 0),
                           OSSL_PARAM_END};
        if (EVP_PKEY_CTX_set_params(ctx->shadow, md) <= 0)
            return 0;
    }
    if (params && EVP_PKEY_CTX_set_params(ctx->shadow, params) <= 0)
        return 0;
    if (digesting) {
        EVP_MD *md = EVP_MD_fetch(NULL, mdname, MHSM_DEFAULT_PROPQ);
        ctx->hash = EVP_MD_CTX_new();
        int ok = md && ctx->hash && EVP_DigestInit_ex2(ctx->hash, md, NULL);
        EVP_MD_free(md);
        return ok;
    }
    return 1;
}

/* Ask the HSM (through Python) to sign a digest, as the shadow's parameters describe it. */
static int mhsm_sig_hsm(mhsm_sig *ctx, const unsigned char *digest, size_t digest_len, unsigned char *sig,
                        size_t *siglen, size_t sigsize)
{
    char mdname[64] = "", mgf1[64] = "";
    int pad_mode = 0, saltlen = 0;
    OSSL_PARAM rsa[] = {OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_DIGEST, mdname, sizeof(mdname)),
                        OSSL_PARAM_int(OSSL_SIGNATURE_PARAM_PAD_MODE, &pad_mode),
                        OSSL_PARAM_int(OSSL_SIGNATURE_PARAM_PSS_SALTLEN, &saltlen),
                        OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_MGF1_DIGEST, mgf1, sizeof(mgf1)), OSSL_PARAM_END};
    if (ctx->ec)
        rsa[1] = OSSL_PARAM_construct_end(); /* ECDSA: the digest name only */
    if (!ctx->signing || EVP_PKEY_CTX_get_params(ctx->shadow, rsa) <= 0)
        return 0;
    if (pad_mode != 6) /* RSA_PKCS1_PSS_PADDING: MGF1 and salt mean something only for PSS */
        mgf1[0] = '\0';
    struct mhsm_sign_request request = {mdname, pad_mode, saltlen, mgf1, digest, digest_len};
    embed_guard guard;
    *siglen = sigsize;
    ASYNC_JOB *job = ASYNC_get_current_job();
    if (job) /* SSL_MODE_ASYNC: a pool thread signs while the job pauses (async.c) */
        return mhsm_offstack_sign(job, ctx->key->handle, &request, sig, siglen);
    if (!mhsm_python_enter(&guard))
        return 0;
    int ok = py_sign(ctx->key->handle, &request, sig, siglen);
    mhsm_python_leave(&guard);
    return ok;
}

static int mhsm_sig_size(mhsm_sig *ctx, size_t *siglen)
{
    int size = ctx->key ? EVP_PKEY_get_size(ctx->key->pub) : 0;
    *siglen = size > 0 ? (size_t)size : 0;
    return size > 0;
}

static int mhsm_sign_init(void *vctx, void *keydata, const OSSL_PARAM params[])
{
    return mhsm_sig_init(vctx, keydata, NULL, 0, 1, params);
}

static int mhsm_sign(void *vctx, unsigned char *sig, size_t *siglen, size_t sigsize, const unsigned char *tbs,
                     size_t tbslen)
{
    mhsm_sig *ctx = vctx;
    return sig ? mhsm_sig_hsm(ctx, tbs, tbslen, sig, siglen, sigsize) : mhsm_sig_size(ctx, siglen);
}

static int mhsm_verify_init(void *vctx, void *keydata, const OSSL_PARAM params[])
{
    return mhsm_sig_init(vctx, keydata, NULL, 0, 0, params);
}

static int mhsm_verify(void *vctx, const unsigned char *sig, size_t siglen, const unsigned char *tbs, size_t tbslen)
{
    mhsm_sig *ctx = vctx;
    return ctx->shadow && EVP_PKEY_verify(ctx->shadow, sig, siglen, tbs, tbslen) > 0;
}

static int mhsm_digest_sign_init(void *vctx, const char *mdname, void *keydata, const OSSL_PARAM params[])
{
    return mhsm_sig_init(vctx, keydata, mdname, 1, 1, params);
}

static int mhsm_digest_verify_init(void *vctx, const char *mdname, void *keydata, const OSSL_PARAM params[])
{
    return mhsm_sig_init(vctx, keydata, mdname, 1, 0, params);
}

static int mhsm_digest_update(void *vctx, const unsigned char *data, size_t datalen)
{
    mhsm_sig *ctx = vctx;
    if (ctx->verify)
        return EVP_DigestVerifyUpdate(ctx->verify, data, datalen);
    return ctx->hash && EVP_DigestUpdate(ctx->hash, data, datalen);
}

static int mhsm_digest_sign_final(void *vctx, unsigned char *sig, size_t *siglen, size_t sigsize)
{
    mhsm_sig *ctx = vctx;
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int digest_len = 0;
    if (!sig)
        return mhsm_sig_size(ctx, siglen);
    return ctx->hash && EVP_DigestFinal_ex(ctx->hash, digest, &digest_len) &&
           mhsm_sig_hsm(ctx, digest, digest_len, sig, siglen, sigsize);
}

/* One-shot: libssl's EVP_DigestSign() (asked twice: for the size, then for the signature). */
static int mhsm_digest_sign(void *vctx, unsigned char *sig, size_t *siglen, size_t sigsize, const unsigned char *tbs,
                            size_t tbslen)
{
    mhsm_sig *ctx = vctx;
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int digest_len = 0;
    if (!sig)
        return mhsm_sig_size(ctx, siglen);
    EVP_MD_CTX *hash = EVP_MD_CTX_new();
    int ok = hash && ctx->hash && EVP_MD_CTX_copy_ex(hash, ctx->hash) && EVP_DigestUpdate(hash, tbs, tbslen) &&
             EVP_DigestFinal_ex(hash, digest, &digest_len);
    EVP_MD_CTX_free(hash);
    return ok && mhsm_sig_hsm(ctx, digest, digest_len, sig, siglen, sigsize);
}

static int mhsm_digest_verify_final(void *vctx, const unsigned char *sig, size_t siglen)
{
    mhsm_sig *ctx = vctx;
    return ctx->verify && EVP_DigestVerifyFinal(ctx->verify, sig, siglen) > 0;
}

static int mhsm_sig_get_params(void *vctx, OSSL_PARAM params[])
{
    mhsm_sig *ctx = vctx;
    return ctx->shadow && EVP_PKEY_CTX_get_params(ctx->shadow, params) > 0;
}

static int mhsm_sig_set_params(void *vctx, const OSSL_PARAM params[])
{
    mhsm_sig *ctx = vctx;
    if (!params || !params->key)
        return 1;
    return ctx->shadow && EVP_PKEY_CTX_set_params(ctx->shadow, (OSSL_PARAM *)params) > 0;
}

static const OSSL_PARAM *mhsm_sig_gettable(void *vctx, void *provctx)
{
    static const OSSL_PARAM list[] = {
        OSSL_PARAM_octet_string(OSSL_SIGNATURE_PARAM_ALGORITHM_ID, NULL, 0),
        OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_DIGEST, NULL, 0),
        OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PAD_MODE, NULL, 0),
        OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PSS_SALTLEN, NULL, 0),
        OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_MGF1_DIGEST, NULL, 0), OSSL_PARAM_END};
    (void)vctx, (void)provctx;
    return list;
}

/* The types named here are how EVP_PKEY_CTX_ctrl_str() text (-pkeyopt, -sigopt) gets parsed. */
static const OSSL_PARAM *mhsm_rsa_settable(void *vctx, void *provctx)
{
    static const OSSL_PARAM list[] = {
        OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_DIGEST, NULL, 0),
        OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PROPERTIES, NULL, 0),
        OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PAD_MODE, NULL, 0),
        OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_MGF1_DIGEST, NULL, 0),
        OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_MGF1_PROPERTIES, NULL, 0),
        OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PSS_SALTLEN, NULL, 0), OSSL_PARAM_END};
    (void)vctx, (void)provctx;
    return list;
}

static const OSSL_PARAM *mhsm_ec_settable(void *vctx, void *provctx)
{
    static const OSSL_PARAM list[] = {OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_DIGEST, NULL, 0),
                                      OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PROPERTIES, NULL, 0),
                                      OSSL_PARAM_END};
    (void)vctx, (void)provctx;
    return list;
}

#define MHSM_SIGNATURE(prefix, new_fn, settable_fn)                                                    \
    static const OSSL_DISPATCH prefix##_signature[] = {                                             \
        {OSSL_FUNC_SIGNATURE_NEWCTX, (void (*)(void))new_fn},                                         \
        {OSSL_FUNC_SIGNATURE_FREECTX, (void (*)(void))mhsm_sig_free},                                 \
        {OSSL_FUNC_SIGNATURE_DUPCTX, (void (*)(void))mhsm_sig_dup},                                   \
        {OSSL_FUNC_SIGNATURE_SIGN_INIT, (void (*)(void))mhsm_sign_init},                              \
        {OSSL_FUNC_SIGNATURE_SIGN, (void (*)(void))mhsm_sign},                                        \
        {OSSL_FUNC_SIGNATURE_VERIFY_INIT, (void (*)(void))mhsm_verify_init},                          \
        {OSSL_FUNC_SIGNATURE_VERIFY, (void (*)(void))mhsm_verify},                                    \
        {OSSL_FUNC_SIGNATURE_DIGEST_SIGN_INIT, (void (*)(void))mhsm_digest_sign_init},                \
        {OSSL_FUNC_SIGNATURE_DIGEST_SIGN_UPDATE, (void (*)(void))mhsm_digest_update},                 \
        {OSSL_FUNC_SIGNATURE_DIGEST_SIGN_FINAL, (void (*)(void))mhsm_digest_sign_final},              \
        {OSSL_FUNC_SIGNATURE_DIGEST_SIGN, (void (*)(void))mhsm_digest_sign},                          \
        {OSSL_FUNC_SIGNATURE_DIGEST_VERIFY_INIT, (void (*)(void))mhsm_digest_verify_init},            \
        {OSSL_FUNC_SIGNATURE_DIGEST_VERIFY_UPDATE, (void (*)(void))mhsm_digest_update},               \
        {OSSL_FUNC_SIGNATURE_DIGEST_VERIFY_FINAL, (void (*)(void))mhsm_digest_verify_final},          \
        {OSSL_FUNC_SIGNATURE_GET_CTX_PARAMS, (void (*)(void))mhsm_sig_get_params},                    \
        {OSSL_FUNC_SIGNATURE_GETTABLE_CTX_PARAMS, (void (*)(void))mhsm_sig_gettable},                 \
        {OSSL_FUNC_SIGNATURE_SET_CTX_PARAMS, (void (*)(void))mhsm_sig_set_params},                    \
        {OSSL_FUNC_SIGNATURE_SETTABLE_CTX_PARAMS, (void (*)(void))settable_fn},                       \
        {0, NULL}};

MHSM_SIGNATURE(mhsm_rsa, mhsm_rsa_sig_new, mhsm_rsa_settable)
MHSM_SIGNATURE(mhsm_ecdsa, mhsm_ec_sig_new, mhsm_ec_settable)
