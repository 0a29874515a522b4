/*
 * A DECODER for PEM files that wrap a pkcs11: URI (so nginx < 1.29, HAProxy and Apache, which read
 * `ssl_certificate_key` with PEM_read_bio_PrivateKey, can name an HSM key), and ENCODERs that write
 * the SubjectPublicKeyInfo of our keys (OpenSSL 3.0 cannot move an HSM key into the default
 * provider to encode it, so `pkey -pubout`, `req` and `x509` need these). Nothing else is
 * registered: no generic decoders or encoders (notes §2.1 rule 5).
 */
#define MHSM_PEM_MAX 65536

static void *mhsm_codec_new(void *provctx)
{
    return provctx; /* stateless; the core only needs a non-NULL context */
}

static void mhsm_codec_free(void *vctx)
{
    (void)vctx;
}

static int mhsm_decoder_selection(void *provctx, int selection)
{
    (void)provctx;
    return selection == 0 || (selection & OSSL_KEYMGMT_SELECT_KEYPAIR) != 0;
}

static int mhsm_uri_decode(void *vctx, OSSL_CORE_BIO *in, int selection, OSSL_CALLBACK *data_cb, void *data_cbarg,
                           OSSL_PASSPHRASE_CALLBACK *pw_cb, void *pw_cbarg)
{
    static const char begin[] = "-----BEGIN " MHSM_PEM_LABEL "-----";
    unsigned char *pem = malloc(MHSM_PEM_MAX);
    size_t len = 0;
    (void)vctx, (void)selection, (void)pw_cb, (void)pw_cbarg;
    if (!pem)
        return 0;
    /* Line by line: under OpenSSL 3.0's read-buffer BIO (non-seekable input, the file store)
     * read_ex stops at what an earlier decoder buffered, while gets goes on to the end. */
    int got;
    while (len + 1 < MHSM_PEM_MAX && (got = core_bio_gets(in, (char *)pem + len, (int)(MHSM_PEM_MAX - len))) > 0)
        len += (size_t)got;
    /* Not our label: say nothing, so the next decoder gets its turn (and Python never starts). */
    if (!memmem(pem, len, begin, sizeof(begin) - 1)) {
        free(pem);
        return 1;
    }
    struct mhsm_object object = {.kind = MHSM_OBJECT_KEY};
    embed_guard guard;
    int ok = mhsm_python_enter(&guard);
    if (ok) {
        object.handle = py_decode(pem, len, object.data_type, sizeof(object.data_type));
        mhsm_python_leave(&guard);
    }
    free(pem);
    return ok && object.handle && mhsm_pass_object(&object, data_cb, data_cbarg);
}

static const OSSL_DISPATCH mhsm_uri_decoder[] = {
    {OSSL_FUNC_DECODER_NEWCTX, (void (*)(void))mhsm_codec_new},
    {OSSL_FUNC_DECODER_FREECTX, (void (*)(void))mhsm_codec_free},
    {OSSL_FUNC_DECODER_DOES_SELECTION, (void (*)(void))mhsm_decoder_selection},
    {OSSL_FUNC_DECODER_DECODE, (void (*)(void))mhsm_uri_decode},
    {0, NULL}};

static int mhsm_encoder_selection(void *provctx, int selection)
{
    (void)provctx;
    return (selection & OSSL_KEYMGMT_SELECT_PUBLIC_KEY) && !(selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY);
}

/*
 * A key from another provider, given as parameters: OpenSSL may pick these encoders for any RSA or
 * EC key, and a failing encoder fails the whole encoding, so they import its public part (as the
 * keymgmt does) and encode that.
 */
#define MHSM_ENCODER_IMPORT(name, import_fn)                                                          \
    static void *name(void *vctx, int selection, const OSSL_PARAM params[])                          \
    {                                                                                                \
        mhsm_key *key = mhsm_key_new();                                                              \
        (void)vctx;                                                                                  \
        if (key && !import_fn(key, selection, params)) {                                             \
            mhsm_key_free(key);                                                                      \
            return NULL;                                                                             \
        }                                                                                            \
        return key;                                                                                  \
    }

MHSM_ENCODER_IMPORT(mhsm_rsa_encoder_import, mhsm_rsa_import)
MHSM_ENCODER_IMPORT(mhsm_rsapss_encoder_import, mhsm_rsapss_import)
MHSM_ENCODER_IMPORT(mhsm_ec_encoder_import, mhsm_ec_import)

/* The default provider's encoder writes the bytes: asked by property, so it is never us again. */
static int mhsm_spki_write(OSSL_CORE_BIO *out, const void *obj, int selection, const char *format)
{
    const mhsm_key *key = obj;
    unsigned char *data = NULL;
    size_t len = 0, written = 0;
    if (mhsm_private_refused(selection) || !key || !key->pub)
        return 0;
    OSSL_ENCODER_CTX *encoder = OSSL_ENCODER_CTX_new_for_pkey(key->pub, EVP_PKEY_PUBLIC_KEY, format,
                                                              "SubjectPublicKeyInfo", MHSM_DEFAULT_PROPQ);
    int ok = encoder && OSSL_ENCODER_to_data(encoder, &data, &len) && core_bio_write_ex(out, data, len, &written) &&
             written == len;
    OSSL_ENCODER_CTX_free(encoder);
    OPENSSL_free(data);
    return ok;
}

static int mhsm_spki_der(void *vctx, OSSL_CORE_BIO *out, const void *obj, const OSSL_PARAM abstract[], int selection,
                         OSSL_PASSPHRASE_CALLBACK *cb, void *cbarg)
{
    (void)vctx, (void)abstract, (void)cb, (void)cbarg;
    return mhsm_spki_write(out, obj, selection, "DER");
}

static int mhsm_spki_pem(void *vctx, OSSL_CORE_BIO *out, const void *obj, const OSSL_PARAM abstract[], int selection,
                         OSSL_PASSPHRASE_CALLBACK *cb, void *cbarg)
{
    (void)vctx, (void)abstract, (void)cb, (void)cbarg;
    return mhsm_spki_write(out, obj, selection, "PEM");
}

#define MHSM_ENCODER(name, import_fn, encode_fn)                                                                \
    static const OSSL_DISPATCH name[] = {                                                           \
        {OSSL_FUNC_ENCODER_NEWCTX, (void (*)(void))mhsm_codec_new},                                   \
        {OSSL_FUNC_ENCODER_FREECTX, (void (*)(void))mhsm_codec_free},                                 \
        {OSSL_FUNC_ENCODER_DOES_SELECTION, (void (*)(void))mhsm_encoder_selection},                   \
        {OSSL_FUNC_ENCODER_IMPORT_OBJECT, (void (*)(void))import_fn},                                 \
        {OSSL_FUNC_ENCODER_FREE_OBJECT, (void (*)(void))mhsm_key_free},                               \
        {OSSL_FUNC_ENCODER_ENCODE, (void (*)(void))encode_fn},                                        \
        {0, NULL}};

MHSM_ENCODER(mhsm_rsa_der_encoder, mhsm_rsa_encoder_import, mhsm_spki_der)
MHSM_ENCODER(mhsm_rsa_pem_encoder, mhsm_rsa_encoder_import, mhsm_spki_pem)
MHSM_ENCODER(mhsm_rsapss_der_encoder, mhsm_rsapss_encoder_import, mhsm_spki_der)
MHSM_ENCODER(mhsm_rsapss_pem_encoder, mhsm_rsapss_encoder_import, mhsm_spki_pem)
MHSM_ENCODER(mhsm_ec_der_encoder, mhsm_ec_encoder_import, mhsm_spki_der)
MHSM_ENCODER(mhsm_ec_pem_encoder, mhsm_ec_encoder_import, mhsm_spki_pem)
