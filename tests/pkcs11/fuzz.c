/*
 * A seeded fuzzer of the module from C: random and hostile templates, mechanisms and their
 * parameters, lengths, NULL pointers and handles into every function the module implements.
 *
 *   fuzz MODULE SEED SECONDS
 *
 * Work is in rounds: C_Initialize, a few sessions, CALLS_PER_ROUND random calls, then every session
 * is checked and C_Finalize. Each call's return value must be one PKCS#11 2.40 lists for that
 * function (plus the deviations docs/pkcs11.md names), CKR_GENERAL_ERROR never (it is what the
 * embedding returns when Python failed). After any call that ends an operation the session must
 * have none left ("wedged": a sign or verify still active). The same SEED makes the same calls.
 *
 * Lines printed: "round N calls C rss KB" after each round, "BAD ..." for each violation, and at
 * the end "calls N" and "bad N". Exit status: the number of violations (capped at 99).
 * Lengths never exceed the buffers they describe: reading past a caller's buffer because the
 * caller lied is the caller's bug, not the module's.
 */
#include <dlfcn.h>
#include <p11-kit/pkcs11.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define CALLS_PER_ROUND 400
#define SESSIONS 4
#define BUF 512

static CK_FUNCTION_LIST *p11;
static uint64_t state;
static long calls, bad;

static uint64_t next(void) /* xorshift64* */
{
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    return state * 2685821657736338717ULL;
}

static CK_ULONG below(CK_ULONG n)
{
    return n ? (CK_ULONG)(next() % n) : 0;
}

static int chance(int percent)
{
    return (int)below(100) < percent;
}

/* -- what each function may return ------------------------------------------------------------------ */

/* Every function may return these (2.40 section 5.1.1-5.1.3 for a function with a session). */
static const CK_RV common[] = {CKR_OK, CKR_ARGUMENTS_BAD, CKR_CRYPTOKI_NOT_INITIALIZED, CKR_DEVICE_ERROR,
                               CKR_DEVICE_MEMORY, CKR_DEVICE_REMOVED, CKR_FUNCTION_FAILED, CKR_HOST_MEMORY,
                               CKR_SESSION_CLOSED, CKR_SESSION_HANDLE_INVALID, CKR_FUNCTION_CANCELED};

enum fn { F_INFO, F_SLOTS, F_SLOT_INFO, F_TOKEN_INFO, F_MECHS, F_MECH_INFO, F_OPEN, F_CLOSE, F_CLOSE_ALL,
          F_SESSION_INFO, F_LOGIN, F_LOGOUT, F_FIND_INIT, F_FIND, F_FIND_FINAL, F_GET_ATTR, F_SET_ATTR,
          F_SIGN_INIT, F_SIGN, F_SIGN_UPDATE, F_SIGN_FINAL, F_VERIFY_INIT, F_VERIFY, F_VERIFY_UPDATE,
          F_VERIFY_FINAL, F_KEYGEN, F_RANDOM, F_SEED, F_COUNT };

static const char *fn_names[F_COUNT] = {
    "C_GetInfo", "C_GetSlotList", "C_GetSlotInfo", "C_GetTokenInfo", "C_GetMechanismList", "C_GetMechanismInfo",
    "C_OpenSession", "C_CloseSession", "C_CloseAllSessions", "C_GetSessionInfo", "C_Login", "C_Logout",
    "C_FindObjectsInit", "C_FindObjects", "C_FindObjectsFinal", "C_GetAttributeValue", "C_SetAttributeValue",
    "C_SignInit", "C_Sign", "C_SignUpdate", "C_SignFinal", "C_VerifyInit", "C_Verify", "C_VerifyUpdate",
    "C_VerifyFinal", "C_GenerateKeyPair", "C_GenerateRandom", "C_SeedRandom"};

#define LIST(...) (const CK_RV[]){__VA_ARGS__, (CK_RV)-1}
#define INIT_CODES CKR_KEY_FUNCTION_NOT_PERMITTED, CKR_KEY_HANDLE_INVALID, CKR_KEY_SIZE_RANGE, \
    CKR_KEY_TYPE_INCONSISTENT, CKR_MECHANISM_INVALID, CKR_MECHANISM_PARAM_INVALID, CKR_OPERATION_ACTIVE
/* The function's own codes beyond `common`, from each function's "Return values" in 2.40. */
static const CK_RV *own[F_COUNT] = {
    [F_INFO] = LIST(0), [F_SLOTS] = LIST(CKR_BUFFER_TOO_SMALL),
    [F_SLOT_INFO] = LIST(CKR_SLOT_ID_INVALID), [F_TOKEN_INFO] = LIST(CKR_SLOT_ID_INVALID),
    [F_MECHS] = LIST(CKR_BUFFER_TOO_SMALL, CKR_SLOT_ID_INVALID),
    [F_MECH_INFO] = LIST(CKR_MECHANISM_INVALID, CKR_SLOT_ID_INVALID),
    [F_OPEN] = LIST(CKR_SESSION_PARALLEL_NOT_SUPPORTED, CKR_SLOT_ID_INVALID), [F_CLOSE] = LIST(0),
    [F_CLOSE_ALL] = LIST(CKR_SLOT_ID_INVALID), [F_SESSION_INFO] = LIST(0),
    [F_LOGIN] = LIST(CKR_OPERATION_NOT_INITIALIZED, CKR_PIN_INCORRECT, CKR_USER_ALREADY_LOGGED_IN,
                     CKR_USER_TYPE_INVALID),
    [F_LOGOUT] = LIST(CKR_USER_NOT_LOGGED_IN),
    [F_FIND_INIT] = LIST(CKR_ATTRIBUTE_TYPE_INVALID, CKR_ATTRIBUTE_VALUE_INVALID, CKR_OPERATION_ACTIVE),
    [F_FIND] = LIST(CKR_OPERATION_NOT_INITIALIZED), [F_FIND_FINAL] = LIST(CKR_OPERATION_NOT_INITIALIZED),
    [F_GET_ATTR] = LIST(CKR_ATTRIBUTE_SENSITIVE, CKR_ATTRIBUTE_TYPE_INVALID, CKR_BUFFER_TOO_SMALL,
                        CKR_OBJECT_HANDLE_INVALID),
    [F_SET_ATTR] = LIST(CKR_ACTION_PROHIBITED, CKR_ATTRIBUTE_READ_ONLY, CKR_ATTRIBUTE_TYPE_INVALID,
                        CKR_ATTRIBUTE_VALUE_INVALID, CKR_OBJECT_HANDLE_INVALID, CKR_SESSION_READ_ONLY,
                        CKR_TEMPLATE_INCONSISTENT),
    [F_SIGN_INIT] = LIST(INIT_CODES), [F_VERIFY_INIT] = LIST(INIT_CODES),
    [F_SIGN] = LIST(CKR_BUFFER_TOO_SMALL, CKR_DATA_INVALID, CKR_DATA_LEN_RANGE, CKR_OPERATION_NOT_INITIALIZED),
    /* CKR_FUNCTION_NOT_SUPPORTED: multi-part input to a single-part mechanism (docs/pkcs11.md) */
    [F_SIGN_UPDATE] = LIST(CKR_DATA_LEN_RANGE, CKR_OPERATION_NOT_INITIALIZED, CKR_FUNCTION_NOT_SUPPORTED),
    [F_SIGN_FINAL] = LIST(CKR_BUFFER_TOO_SMALL, CKR_DATA_LEN_RANGE, CKR_OPERATION_NOT_INITIALIZED),
    [F_VERIFY] = LIST(CKR_DATA_INVALID, CKR_DATA_LEN_RANGE, CKR_OPERATION_NOT_INITIALIZED, CKR_SIGNATURE_INVALID,
                      CKR_SIGNATURE_LEN_RANGE),
    [F_VERIFY_UPDATE] = LIST(CKR_DATA_LEN_RANGE, CKR_OPERATION_NOT_INITIALIZED, CKR_FUNCTION_NOT_SUPPORTED),
    [F_VERIFY_FINAL] = LIST(CKR_DATA_LEN_RANGE, CKR_OPERATION_NOT_INITIALIZED, CKR_SIGNATURE_INVALID,
                            CKR_SIGNATURE_LEN_RANGE),
    [F_KEYGEN] = LIST(CKR_ATTRIBUTE_READ_ONLY, CKR_ATTRIBUTE_TYPE_INVALID, CKR_ATTRIBUTE_VALUE_INVALID,
                      CKR_CURVE_NOT_SUPPORTED, CKR_MECHANISM_INVALID, CKR_MECHANISM_PARAM_INVALID,
                      CKR_SESSION_READ_ONLY, CKR_TEMPLATE_INCOMPLETE, CKR_TEMPLATE_INCONSISTENT),
    [F_RANDOM] = LIST(0), [F_SEED] = LIST(CKR_RANDOM_SEED_NOT_SUPPORTED),
};
static long counts[F_COUNT];

static void violation(const char *what, enum fn f, CK_RV rv)
{
    printf("BAD %s: %s returned 0x%lx (call %ld)\n", what, fn_names[f], rv, calls);
    bad++;
}

static CK_RV checked(enum fn f, CK_RV rv)
{
    calls++;
    counts[f]++;
    for (size_t i = 0; i < sizeof common / sizeof common[0]; i++)
        if (rv == common[i])
            return rv;
    for (const CK_RV *r = own[f]; *r != (CK_RV)-1; r++)
        if (rv == *r && rv != 0)
            return rv;
    violation("a code PKCS#11 does not list", f, rv);
    return rv;
}

/* -- random inputs ------------------------------------------------------------------------------------ */

static CK_SESSION_HANDLE sessions[SESSIONS];
static CK_OBJECT_HANDLE objects[8];
static int object_count;
static unsigned char pool[40][BUF]; /* attribute values, data, signatures, parameters */

static CK_SESSION_HANDLE any_session(void)
{
    if (chance(85))
        return sessions[below(SESSIONS)];
    static const CK_SESSION_HANDLE odd[] = {0, 1, 987654, (CK_SESSION_HANDLE)-1, 0x7fffffff};
    return odd[below(sizeof odd / sizeof odd[0])];
}

static CK_OBJECT_HANDLE any_object(void)
{
    if (object_count && chance(80))
        return objects[below(object_count)];
    return chance(50) ? below(64) : (CK_OBJECT_HANDLE)next();
}

static CK_SLOT_ID any_slot(void)
{
    return chance(85) ? 0 : (CK_SLOT_ID)(chance(50) ? below(4) : next());
}

static const CK_ATTRIBUTE_TYPE attribute_types[] = {
    CKA_CLASS, CKA_KEY_TYPE, CKA_LABEL, CKA_ID, CKA_TOKEN, CKA_PRIVATE, CKA_SENSITIVE, CKA_EXTRACTABLE, CKA_SIGN,
    CKA_VERIFY, CKA_DECRYPT, CKA_ENCRYPT, CKA_WRAP, CKA_UNWRAP, CKA_DERIVE, CKA_MODIFIABLE, CKA_MODULUS_BITS,
    CKA_PUBLIC_EXPONENT, CKA_MODULUS, CKA_EC_PARAMS, CKA_EC_POINT, CKA_START_DATE, CKA_END_DATE, CKA_SUBJECT,
    CKA_VALUE, CKA_PRIVATE_EXPONENT, CKA_ALLOWED_MECHANISMS, CKA_LOCAL, CKA_ALWAYS_AUTHENTICATE, CKA_TRUSTED,
    CKA_COPYABLE, CKA_KEY_GEN_MECHANISM, CKA_PUBLIC_KEY_INFO, 0x80000001UL};

/* A value for `type`: often well-formed (so the checks past decoding are reached), else random bytes. */
static void value_for(CK_ATTRIBUTE *a, unsigned char *buffer)
{
    static const unsigned char p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
    static const CK_ULONG numbers[] = {0, 1, 2, 3, 1024, 2048, 3072, 4096, CKO_PRIVATE_KEY, CKO_PUBLIC_KEY, CKK_EC,
                                       (CK_ULONG)-1};
    a->pValue = buffer;
    int kind = (int)below(10);
    if (kind < 3 && a->type != CKA_EC_PARAMS) { /* a CK_BBOOL or a CK_ULONG */
        CK_ULONG n = numbers[below(sizeof numbers / sizeof numbers[0])];
        if (chance(50)) {
            buffer[0] = (unsigned char)below(3);
            a->ulValueLen = 1;
        } else {
            memcpy(buffer, &n, sizeof n);
            a->ulValueLen = sizeof n;
        }
    } else if (kind < 4) {
        memcpy(buffer, p256, sizeof p256);
        a->ulValueLen = sizeof p256;
    } else if (kind < 5) {
        memcpy(buffer, chance(50) ? "20300101" : "2029x101", 8);
        a->ulValueLen = 8;
    } else if (kind < 6) {
        a->pValue = NULL;
        a->ulValueLen = chance(50) ? 0 : 1 + below(BUF);
    } else {
        for (CK_ULONG i = 0; i < 32; i++)
            buffer[i] = (unsigned char)next();
        a->ulValueLen = chance(80) ? below(33) : below(BUF + 1);
    }
}

static CK_ULONG any_template(CK_ATTRIBUTE *t, CK_ULONG room, int first_pool)
{
    CK_ULONG count = chance(10) ? 0 : 1 + below(chance(90) ? 5 : room);
    for (CK_ULONG i = 0; i < count; i++) {
        t[i].type = chance(95) ? attribute_types[below(sizeof attribute_types / sizeof attribute_types[0])]
                               : (CK_ATTRIBUTE_TYPE)next();
        value_for(&t[i], pool[first_pool + (int)(i % 8)]);
    }
    return count;
}

static const CK_MECHANISM_TYPE mechanism_types[] = {
    CKM_RSA_PKCS, CKM_RSA_PKCS_PSS, CKM_ECDSA, CKM_SHA256_RSA_PKCS, CKM_SHA384_RSA_PKCS, CKM_SHA512_RSA_PKCS,
    CKM_SHA256_RSA_PKCS_PSS, CKM_SHA384_RSA_PKCS_PSS, CKM_SHA512_RSA_PKCS_PSS, CKM_ECDSA_SHA256, CKM_ECDSA_SHA384,
    CKM_ECDSA_SHA512, CKM_RSA_PKCS_KEY_PAIR_GEN, CKM_EC_KEY_PAIR_GEN, CKM_SHA1_RSA_PKCS, CKM_SHA256, 0x80001234UL};

static void any_mechanism(CK_MECHANISM *m)
{
    m->mechanism = chance(95) ? mechanism_types[below(sizeof mechanism_types / sizeof mechanism_types[0])]
                              : (CK_MECHANISM_TYPE)next();
    m->pParameter = NULL;
    m->ulParameterLen = 0;
    int kind = (int)below(10);
    if (kind < 3) { /* PSS parameters, plausible or not */
        CK_RSA_PKCS_PSS_PARAMS *pss = (CK_RSA_PKCS_PSS_PARAMS *)pool[30];
        static const CK_MECHANISM_TYPE hashes[] = {CKM_SHA256, CKM_SHA384, CKM_SHA512, CKM_SHA_1, 0};
        static const CK_RSA_PKCS_MGF_TYPE mgfs[] = {CKG_MGF1_SHA256, CKG_MGF1_SHA384, CKG_MGF1_SHA512, 7};
        pss->hashAlg = hashes[below(5)];
        pss->mgf = mgfs[below(4)];
        pss->sLen = chance(50) ? 32 : below(100);
        m->pParameter = pss;
        m->ulParameterLen = chance(80) ? sizeof *pss : below(sizeof *pss + 1);
    } else if (kind < 4) {
        m->pParameter = pool[31];
        m->ulParameterLen = below(64);
    }
}

/* Data to sign or verify: well-sized digests often, anything else too. */
static CK_ULONG any_data(unsigned char **data)
{
    static const CK_ULONG sizes[] = {0, 1, 20, 32, 48, 51, 64, 245, 256, 300, BUF};
    *data = pool[32];
    for (int i = 0; i < 64; i++)
        pool[32][i] = (unsigned char)next();
    if (chance(5)) {
        *data = NULL;
        return chance(50) ? 0 : 16;
    }
    return sizes[below(sizeof sizes / sizeof sizes[0])];
}

/* -- the calls -------------------------------------------------------------------------------------- */

/* After a call that ends any active operation of `kind` (sign or verify), none may be left. */
static void ended(CK_SESSION_HANDLE s, int sign, enum fn f)
{
    CK_ULONG len = 0;
    CK_RV rv = sign ? p11->C_SignFinal(s, NULL, &len) : p11->C_VerifyFinal(s, NULL, 0);
    if (rv != CKR_OPERATION_NOT_INITIALIZED && rv != CKR_SESSION_HANDLE_INVALID &&
        rv != CKR_CRYPTOKI_NOT_INITIALIZED)
        violation("an operation was left active (wedged session) after", f, rv);
}

/* Up to 8 objects to aim at, whatever the HSM holds (the fuzzer relabels keys, so not by label). */
static void find_objects(CK_SESSION_HANDLE rw)
{
    CK_ULONG n = 0;
    object_count = 0;
    if (p11->C_FindObjectsInit(rw, NULL, 0) == CKR_OK) {
        p11->C_FindObjects(rw, objects, 8, &n);
        p11->C_FindObjectsFinal(rw);
        object_count = (int)n;
    }
    if (object_count == 0)
        violation("no object found", F_FIND, CKR_OK);
}

static void open_sessions(void)
{
    for (int i = 0; i < SESSIONS; i++)
        if (p11->C_OpenSession(0, CKF_SERIAL_SESSION | (i % 2 ? CKF_RW_SESSION : 0), NULL, NULL, &sessions[i]) !=
            CKR_OK)
            violation("could not open a session", F_OPEN, 0);
}

static void one_call(void)
{
    CK_ATTRIBUTE t1[40], t2[40];
    CK_MECHANISM mech;
    CK_ULONG len = below(BUF + 1), n;
    CK_ULONG *plen = chance(5) ? NULL : &len;
    unsigned char *out = chance(15) ? NULL : pool[33], *data;
    CK_SESSION_HANDLE s = any_session();
    CK_OBJECT_HANDLE pub, priv;
    CK_RV rv;
    enum fn f = (enum fn)below(F_COUNT);
    union {
        CK_INFO info;
        CK_SLOT_INFO slot;
        CK_TOKEN_INFO token;
        CK_MECHANISM_INFO mech;
        CK_SESSION_INFO session;
        CK_SLOT_ID ids[64];
        CK_MECHANISM_TYPE types[64];
        CK_OBJECT_HANDLE handles[64];
    } u;
    void *info = chance(5) ? NULL : &u;
    CK_ULONG room = 64;
    CK_ULONG *proom = chance(5) ? NULL : &room;
    room = below(65);
    switch (f) {
    case F_INFO: checked(f, p11->C_GetInfo(info)); break;
    case F_SLOTS: checked(f, p11->C_GetSlotList((CK_BBOOL)below(2), chance(30) ? NULL : u.ids, proom)); break;
    case F_SLOT_INFO: checked(f, p11->C_GetSlotInfo(any_slot(), info)); break;
    case F_TOKEN_INFO: checked(f, p11->C_GetTokenInfo(any_slot(), info)); break;
    case F_MECHS: checked(f, p11->C_GetMechanismList(any_slot(), chance(30) ? NULL : u.types, proom)); break;
    case F_MECH_INFO:
        any_mechanism(&mech);
        checked(f, p11->C_GetMechanismInfo(any_slot(), mech.mechanism, info));
        break;
    case F_OPEN: { /* replaces one of ours, which is closed first, so the count stays bounded */
        int i = (int)below(SESSIONS);
        p11->C_CloseSession(sessions[i]);
        CK_FLAGS flags = chance(90) ? CKF_SERIAL_SESSION | (chance(50) ? CKF_RW_SESSION : 0) : (CK_FLAGS)next();
        rv = checked(f, p11->C_OpenSession(any_slot(), flags, NULL, NULL, chance(5) ? NULL : &sessions[i]));
        if (rv != CKR_OK)
            p11->C_OpenSession(0, CKF_SERIAL_SESSION, NULL, NULL, &sessions[i]);
        break;
    }
    case F_CLOSE:
        if (chance(20)) { /* a real one: reopen it */
            int i = (int)below(SESSIONS);
            checked(f, p11->C_CloseSession(sessions[i]));
            p11->C_OpenSession(0, CKF_SERIAL_SESSION, NULL, NULL, &sessions[i]);
        } else if (s != sessions[0] && s != sessions[1] && s != sessions[2] && s != sessions[3]) {
            checked(f, p11->C_CloseSession(s));
        }
        break;
    case F_CLOSE_ALL:
        if (chance(5)) {
            checked(f, p11->C_CloseAllSessions(any_slot()));
            open_sessions();
        }
        break;
    case F_SESSION_INFO: checked(f, p11->C_GetSessionInfo(s, info)); break;
    case F_LOGIN: {
        static const char *pins[] = {"", "1234", "not-a-guid:nope", "a:", ":b", "\xff\xfe"};
        const char *pin = pins[below(6)];
        CK_USER_TYPE user = chance(80) ? CKU_USER : (CK_USER_TYPE)below(4);
        checked(f, p11->C_Login(s, user, chance(5) ? NULL : (unsigned char *)pin, strlen(pin)));
        break;
    }
    case F_LOGOUT: checked(f, p11->C_Logout(s)); break;
    case F_FIND_INIT: checked(f, p11->C_FindObjectsInit(s, chance(5) ? NULL : t1, any_template(t1, 40, 0))); break;
    case F_FIND: checked(f, p11->C_FindObjects(s, chance(5) ? NULL : u.handles, below(65), proom)); break;
    case F_FIND_FINAL: checked(f, p11->C_FindObjectsFinal(s)); break;
    case F_GET_ATTR:
        n = any_template(t1, 40, 0);
        for (CK_ULONG i = 0; i < n; i++) /* an output buffer as long as it says, or a size query */
            if (t1[i].pValue == NULL)
                t1[i].ulValueLen = 0;
        checked(f, p11->C_GetAttributeValue(s, any_object(), chance(5) ? NULL : t1, n));
        break;
    case F_SET_ATTR: checked(f, p11->C_SetAttributeValue(s, any_object(), chance(5) ? NULL : t1,
                                                          any_template(t1, 40, 0))); break;
    case F_SIGN_INIT:
    case F_VERIFY_INIT:
        any_mechanism(&mech);
        rv = f == F_SIGN_INIT ? p11->C_SignInit(s, chance(5) ? NULL : &mech, any_object())
                              : p11->C_VerifyInit(s, chance(5) ? NULL : &mech, any_object());
        checked(f, rv);
        break;
    case F_SIGN:
        n = any_data(&data);
        rv = checked(f, p11->C_Sign(s, data, n, out, plen));
        if (!((rv == CKR_OK && out == NULL) || rv == CKR_BUFFER_TOO_SMALL))
            ended(s, 1, f);
        break;
    case F_SIGN_UPDATE:
    case F_VERIFY_UPDATE:
        n = any_data(&data);
        rv = checked(f, f == F_SIGN_UPDATE ? p11->C_SignUpdate(s, data, n) : p11->C_VerifyUpdate(s, data, n));
        if (rv != CKR_OK)
            ended(s, f == F_SIGN_UPDATE, f);
        break;
    case F_SIGN_FINAL:
        rv = checked(f, p11->C_SignFinal(s, out, plen));
        if (!((rv == CKR_OK && out == NULL) || rv == CKR_BUFFER_TOO_SMALL))
            ended(s, 1, f);
        break;
    case F_VERIFY:
        n = any_data(&data);
        checked(f, p11->C_Verify(s, data, n, pool[34], below(BUF + 1)));
        ended(s, 0, f);
        break;
    case F_VERIFY_FINAL:
        checked(f, p11->C_VerifyFinal(s, chance(5) ? NULL : pool[34], below(BUF + 1)));
        ended(s, 0, f);
        break;
    case F_KEYGEN: {
        any_mechanism(&mech);
        CK_ULONG n1 = any_template(t1, 40, 0), n2 = any_template(t2, 40, 8);
        checked(f, p11->C_GenerateKeyPair(s, chance(5) ? NULL : &mech, chance(5) ? NULL : t1, n1,
                                          chance(5) ? NULL : t2, n2, chance(5) ? NULL : &pub, &priv));
        break;
    }
    case F_RANDOM: checked(f, p11->C_GenerateRandom(s, out, out ? below(BUF + 1) : below(3))); break;
    case F_SEED: checked(f, p11->C_SeedRandom(s, chance(10) ? NULL : pool[35], below(BUF + 1))); break;
    case F_COUNT: break;
    }
}

static long rss_kb(void)
{
    long pages = 0, resident = 0;
    FILE *statm = fopen("/proc/self/statm", "r");
    if (statm) {
        if (fscanf(statm, "%ld %ld", &pages, &resident) != 2)
            resident = 0;
        fclose(statm);
    }
    return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s MODULE SEED SECONDS\n", argv[0]);
        return 100;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    state = strtoull(argv[2], NULL, 10) * 0x9E3779B97F4A7C15ULL + 1;
    double seconds = atof(argv[3]);
    void *module = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    void *symbol = module ? dlsym(module, "C_GetFunctionList") : NULL;
    CK_C_GetFunctionList get_list;
    memcpy(&get_list, &symbol, sizeof get_list);
    if (!get_list || get_list(&p11) != CKR_OK) {
        fprintf(stderr, "cannot load %s: %s\n", argv[1], module ? "no function list" : dlerror());
        return 100;
    }
    for (int i = 0; i < 40; i++)
        for (int j = 0; j < BUF; j++)
            pool[i][j] = (unsigned char)next();
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (int round = 1;; round++) {
        CK_RV rv = p11->C_Initialize(NULL);
        if (rv != CKR_OK) {
            printf("BAD C_Initialize returned 0x%lx\n", rv);
            return 99;
        }
        open_sessions();
        find_objects(sessions[1]);
        for (int i = 0; i < CALLS_PER_ROUND; i++)
            one_call();
        for (int i = 0; i < SESSIONS; i++) { /* every session ends the round usable */
            CK_ULONG len = BUF;
            unsigned char data[32] = {0};
            p11->C_Sign(sessions[i], data, sizeof data, pool[33], &len); /* ends an active sign, if any */
            p11->C_Verify(sessions[i], data, sizeof data, pool[34], 64);
            p11->C_FindObjectsFinal(sessions[i]);
            ended(sessions[i], 1, F_SIGN);
            ended(sessions[i], 0, F_VERIFY);
            CK_RV again = p11->C_FindObjectsInit(sessions[i], NULL, 0);
            if (again != CKR_OK)
                violation("a search could not start at the end of the round", F_FIND_INIT, again);
            p11->C_FindObjectsFinal(sessions[i]);
        }
        rv = p11->C_Finalize(NULL);
        if (rv != CKR_OK) {
            printf("BAD C_Finalize returned 0x%lx\n", rv);
            bad++;
        }
        clock_gettime(CLOCK_MONOTONIC, &now);
        printf("round %d calls %ld rss %ld\n", round, calls, rss_kb());
        if ((double)(now.tv_sec - start.tv_sec) + (double)(now.tv_nsec - start.tv_nsec) / 1e9 >= seconds)
            break;
    }
    for (int f = 0; f < F_COUNT; f++)
        printf("count %s %ld\n", fn_names[f], counts[f]);
    printf("calls %ld\nbad %ld\n", calls, bad);
    return bad > 99 ? 99 : (int)bad;
}
