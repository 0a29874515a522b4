/*
 * KEYMGMT for RSA, RSA-PSS and EC: an HSM key reference plus its public half.
 *
 * The public half is an ordinary default-provider EVP_PKEY, so parameters (bits, max-size, group,
 * encoded point) and public exports are answered by the default provider. Anything that selects
 * the private half fails: OpenSSL 3.0 tries to move keys into the default provider with
 * SELECT_ALL before it asks us to sign, and that move must not yield a public-only copy (notes §2
 * rules 2-4). Import takes public material only, for EVP_PKEY_eq() against a certificate's key;
 * such a key cannot sign here.
 */

static void *mhsm_km_new(void *provctx)
{
    (void)provctx;
    return mhsm_key_new();
}

static int mhsm_km_has(const void *keydata, int selection)
{
    const mhsm_key *key = keydata;
    if (!key || !key->pub)
        return 0;
    if ((selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) && !key->is_private)
        return 0;
    return 1;
}

static int mhsm_km_match(const void *keydata1, const void *keydata2, int selection)
{
    const mhsm_key *a = keydata1, *b = keydata2;
    (void)selection; /* the private halves match when the public halves do: both name one HSM key */
    return a && b && a->pub && b->pub && EVP_PKEY_eq(a->pub, b->pub) == 1;
}

static int mhsm_private_refused(int selection)
{
    if (selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) {
        mhsm_raise("the private part of a Managed HSM key never leaves the HSM");
        return 1;
    }
    return 0;
}

static int mhsm_km_export(void *keydata, int selection, OSSL_CALLBACK *cb, void *cbarg)
{
    mhsm_key *key = keydata;
    if (mhsm_private_refused(selection) || !key || !key->pub)
        return 0;
    return EVP_PKEY_export(key->pub, selection, cb, cbarg);
}

static int mhsm_km_import_as(mhsm_key *key, const char *type, int selection, const OSSL_PARAM params[])
{
    if (!key || key->pub)
        return 0;
    if (OSSL_PARAM_locate_const(params, OSSL_PKEY_PARAM_RSA_D) ||
        OSSL_PARAM_locate_const(params, OSSL_PKEY_PARAM_PRIV_KEY)) {
        mhsm_raise("a private key from outside the HSM is not imported: mhsm handles only its own keys");
        return 0;
    }
    (void)selection;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, type, MHSM_DEFAULT_PROPQ);
    int ok = ctx && EVP_PKEY_fromdata_init(ctx) > 0 &&
             EVP_PKEY_fromdata(ctx, &key->pub, EVP_PKEY_PUBLIC_KEY, (OSSL_PARAM *)params) > 0;
    EVP_PKEY_CTX_free(ctx);
    return ok;
}

static int mhsm_rsa_import(void *keydata, int selection, const OSSL_PARAM params[])
{
    return mhsm_km_import_as(keydata, "RSA", selection, params);
}

static int mhsm_rsapss_import(void *keydata, int selection, const OSSL_PARAM params[])
{
    return mhsm_km_import_as(keydata, "RSA-PSS", selection, params);
}

static int mhsm_ec_import(void *keydata, int selection, const OSSL_PARAM params[])
{
    return mhsm_km_import_as(keydata, "EC", selection, params);
}

static const OSSL_PARAM *mhsm_rsa_key_types(int selection)
{
    static const OSSL_PARAM list[] = {OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_N, NULL, 0),
                                      OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_E, NULL, 0), OSSL_PARAM_END};
    return (selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) ? NULL : list;
}

static const OSSL_PARAM *mhsm_ec_key_types(int selection)
{
    static const OSSL_PARAM list[] = {OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, NULL, 0),
                                      OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_PUB_KEY, NULL, 0),
                                      OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT, NULL, 0),
                                      OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_ENCODING, NULL, 0), OSSL_PARAM_END};
    return (selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) ? NULL : list;
}

static int mhsm_km_get_params(void *keydata, OSSL_PARAM params[])
{
    mhsm_key *key = keydata;
    return key && key->pub && EVP_PKEY_get_params(key->pub, params);
}

static const OSSL_PARAM *mhsm_km_gettable_params(void *provctx)
{
    static const OSSL_PARAM list[] = {
        OSSL_PARAM_int(OSSL_PKEY_PARAM_BITS, NULL), OSSL_PARAM_int(OSSL_PKEY_PARAM_SECURITY_BITS, NULL),
        OSSL_PARAM_int(OSSL_PKEY_PARAM_MAX_SIZE, NULL),
        OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_DEFAULT_DIGEST, NULL, 0),
        OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_N, NULL, 0), OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_E, NULL, 0),
        OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, NULL, 0),
        OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_PUB_KEY, NULL, 0),
        OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, NULL, 0),
        OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT, NULL, 0),
        OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_ENCODING, NULL, 0), OSSL_PARAM_END};
    (void)provctx;
    return list;
}

/* A reference from our store or decoder: the bytes of a Python key handle. */
static void *mhsm_km_load(const void *reference, size_t reference_size)
{
    if (!reference || reference_size != sizeof(long))
        return NULL;
    return mhsm_key_from_handle(*(const long *)reference);
}

static void *mhsm_km_dup(const void *keydata, int selection)
{
    const mhsm_key *from = keydata;
    mhsm_key *key = from ? mhsm_key_new() : NULL;
    if (!key)
        return NULL;
    key->handle = from->handle;
    key->is_private = from->is_private && (selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY);
    if (from->pub && EVP_PKEY_up_ref(from->pub))
        key->pub = from->pub;
    return key;
}

static const char *mhsm_rsa_operation_name(int operation_id)
{
    return operation_id == OSSL_OP_SIGNATURE ? "RSA" : NULL;
}

static const char *mhsm_ec_operation_name(int operation_id)
{
    return operation_id == OSSL_OP_SIGNATURE ? "ECDSA" : NULL;
}

#define MHSM_KEYMGMT(prefix, import_fn, types_fn, opname_fn)                                           \
    static const OSSL_DISPATCH prefix##_keymgmt[] = {                                               \
        {OSSL_FUNC_KEYMGMT_NEW, (void (*)(void))mhsm_km_new},                                         \
        {OSSL_FUNC_KEYMGMT_FREE, (void (*)(void))mhsm_key_free},                                      \
        {OSSL_FUNC_KEYMGMT_LOAD, (void (*)(void))mhsm_km_load},                                       \
        {OSSL_FUNC_KEYMGMT_DUP, (void (*)(void))mhsm_km_dup},                                         \
        {OSSL_FUNC_KEYMGMT_HAS, (void (*)(void))mhsm_km_has},                                         \
        {OSSL_FUNC_KEYMGMT_MATCH, (void (*)(void))mhsm_km_match},                                     \
        {OSSL_FUNC_KEYMGMT_IMPORT, (void (*)(void))import_fn},                                        \
        {OSSL_FUNC_KEYMGMT_IMPORT_TYPES, (void (*)(void))types_fn},                                   \
        {OSSL_FUNC_KEYMGMT_EXPORT, (void (*)(void))mhsm_km_export},                                   \
        {OSSL_FUNC_KEYMGMT_EXPORT_TYPES, (void (*)(void))types_fn},                                   \
        {OSSL_FUNC_KEYMGMT_GET_PARAMS, (void (*)(void))mhsm_km_get_params},                           \
        {OSSL_FUNC_KEYMGMT_GETTABLE_PARAMS, (void (*)(void))mhsm_km_gettable_params},                 \
        {OSSL_FUNC_KEYMGMT_QUERY_OPERATION_NAME, (void (*)(void))opname_fn},                          \
        {0, NULL}};

MHSM_KEYMGMT(mhsm_rsa, mhsm_rsa_import, mhsm_rsa_key_types, mhsm_rsa_operation_name)
MHSM_KEYMGMT(mhsm_rsapss, mhsm_rsapss_import, mhsm_rsa_key_types, mhsm_rsa_operation_name)
MHSM_KEYMGMT(mhsm_ec, mhsm_ec_import, mhsm_ec_key_types, mhsm_ec_operation_name)
