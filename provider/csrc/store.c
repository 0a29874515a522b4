/*
 * STORE for the pkcs11: scheme. Python parses the RFC 7512 URI, finds the keys at open (so a bad
 * label or attribute fails OSSL_STORE_open with its reason) and hands them out one by one: the
 * private key first (nginx keeps the first key it gets), then the public one, or a name per object
 * when the URI names none (`openssl storeutl pkcs11:` lists what there is).
 *
 * There is no export_object: OpenSSL then loads every object through our own keymgmt, and never
 * gets a public-only copy of an HSM private key from the default provider (notes §2 rule 2).
 * The passphrase callback is never called: credentials come from the configuration, the
 * environment, or the URI's pin-value / pin-source; a worker has no terminal to prompt on.
 */

typedef struct {
    long store;
    int expect; /* OSSL_STORE_INFO_* wanted, 0 for anything */
    int eof;
} mhsm_store_ctx;

static void *mhsm_store_open(void *provctx, const char *uri)
{
    embed_guard guard;
    (void)provctx;
    if (!mhsm_python_enter(&guard))
        return NULL;
    long store = py_store_open(uri);
    mhsm_python_leave(&guard);
    mhsm_store_ctx *ctx = store ? calloc(1, sizeof(*ctx)) : NULL;
    if (ctx)
        ctx->store = store;
    return ctx;
}

static const OSSL_PARAM *mhsm_store_settable(void *provctx)
{
    static const OSSL_PARAM list[] = {OSSL_PARAM_int(OSSL_STORE_PARAM_EXPECT, NULL), OSSL_PARAM_END};
    (void)provctx;
    return list;
}

static int mhsm_store_set_params(void *vctx, const OSSL_PARAM params[])
{
    mhsm_store_ctx *ctx = vctx;
    const OSSL_PARAM *p = OSSL_PARAM_locate_const(params, OSSL_STORE_PARAM_EXPECT);
    return !p || OSSL_PARAM_get_int(p, &ctx->expect);
}

/* The parameters OpenSSL turns into an OSSL_STORE_INFO (or, from the decoder, into a key). */
static int mhsm_pass_object(struct mhsm_object *object, OSSL_CALLBACK *cb, void *cbarg)
{
    int type = object->kind == MHSM_OBJECT_KEY ? OSSL_OBJECT_PKEY : OSSL_OBJECT_NAME;
    OSSL_PARAM params[4];
    params[0] = OSSL_PARAM_construct_int(OSSL_OBJECT_PARAM_TYPE, &type);
    if (object->kind == MHSM_OBJECT_KEY) {
        params[1] = OSSL_PARAM_construct_utf8_string(OSSL_OBJECT_PARAM_DATA_TYPE, object->data_type, 0);
        params[2] = OSSL_PARAM_construct_octet_string(OSSL_OBJECT_PARAM_REFERENCE, &object->handle,
                                                      sizeof(object->handle));
    } else {
        params[1] = OSSL_PARAM_construct_utf8_string(OSSL_OBJECT_PARAM_DATA, object->uri, 0);
        params[2] = OSSL_PARAM_construct_utf8_string(OSSL_OBJECT_PARAM_DESC, object->desc, 0);
    }
    params[3] = OSSL_PARAM_construct_end();
    return cb(params, cbarg);
}

static int mhsm_store_load(void *vctx, OSSL_CALLBACK *object_cb, void *object_cbarg, OSSL_PASSPHRASE_CALLBACK *pw_cb,
                           void *pw_cbarg)
{
    mhsm_store_ctx *ctx = vctx;
    struct mhsm_object object;
    embed_guard guard;
    (void)pw_cb, (void)pw_cbarg;
    if (ctx->eof || !mhsm_python_enter(&guard)) {
        ctx->eof = 1; /* never leave a caller looping on !eof after a failure */
        return 0;
    }
    memset(&object, 0, sizeof(object));
    int found = py_store_next(ctx->store, ctx->expect, &object);
    mhsm_python_leave(&guard);
    if (found <= 0) {
        ctx->eof = 1;
        return found == 0; /* the end is not an error */
    }
    return mhsm_pass_object(&object, object_cb, object_cbarg);
}

static int mhsm_store_eof(void *vctx)
{
    return ((mhsm_store_ctx *)vctx)->eof;
}

static int mhsm_store_close(void *vctx)
{
    mhsm_store_ctx *ctx = vctx;
    embed_guard guard;
    if (!ctx)
        return 1;
    if (mhsm_python_enter(&guard)) {
        py_store_close(ctx->store);
        mhsm_python_leave(&guard);
    }
    free(ctx);
    return 1;
}

static const OSSL_DISPATCH mhsm_store[] = {
    {OSSL_FUNC_STORE_OPEN, (void (*)(void))mhsm_store_open},
    {OSSL_FUNC_STORE_SETTABLE_CTX_PARAMS, (void (*)(void))mhsm_store_settable},
    {OSSL_FUNC_STORE_SET_CTX_PARAMS, (void (*)(void))mhsm_store_set_params},
    {OSSL_FUNC_STORE_LOAD, (void (*)(void))mhsm_store_load},
    {OSSL_FUNC_STORE_EOF, (void (*)(void))mhsm_store_eof},
    {OSSL_FUNC_STORE_CLOSE, (void (*)(void))mhsm_store_close},
    {0, NULL}};
