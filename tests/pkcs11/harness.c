/*
 * A C host for what the standard tools never try: every call before C_Initialize, NULL and bad
 * arguments, wrong handles, the operation state after errors, login state, threads on one and on
 * many sessions, fork, and an HSM fault in the middle of a sign.
 *
 *   harness MODULE SCENARIO RSA_LABEL EC_LABEL
 *
 * The module is dlopen()ed RTLD_LOCAL as PKCS#11 hosts do. Each check prints one line, "ok NAME" or
 * "FAIL NAME: expected X got Y"; the exit status is the number of failed checks. Other lines are
 * for the test to check with `cryptography`:
 *   sig MECH HASH HEX    a signature over HASH("abc") (MECH: RSA_PKCS, PSS or ECDSA, raw r||s)
 *   pub RSA N_HEX E_HEX  /  pub EC POINT_HEX    the public key as the module reports it
 *   signatures N         how many signatures the scenario asked the HSM for
 * The PIN for C_Login is built from MHSM_CLIENT_ID and MHSM_CLIENT_SECRET, as "<id>:<secret>".
 *
 * Scenarios: uninitialized, init, bad_args, login, sign_states, threads, fork, fork_threads,
 * conformance (return codes the 2.40 text gives, session objects), and (after the test injected
 * faults in the emulator) hsm_fault, hsm_retried, find_fault. `conformance` also prints
 *   session-key LABEL    the label of each session key it made (the test checks none is left)
 */
#include <dlfcn.h>
#include <p11-kit/pkcs11.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static CK_FUNCTION_LIST *p11;
static const char *rsa_label, *ec_label;
static int failures;
static int signatures; /* signatures the HSM was asked for and made (the test compares counters) */

/* -- checks ---------------------------------------------------------------------------------------- */

static const char *rv_name(CK_RV rv)
{
    static char other[32];
    switch (rv) {
#define NAME(x) \
    case x:     \
        return #x;
        NAME(CKR_OK) NAME(CKR_HOST_MEMORY) NAME(CKR_SLOT_ID_INVALID) NAME(CKR_GENERAL_ERROR)
        NAME(CKR_FUNCTION_FAILED) NAME(CKR_ARGUMENTS_BAD) NAME(CKR_CANT_LOCK)
        NAME(CKR_ATTRIBUTE_READ_ONLY) NAME(CKR_ATTRIBUTE_SENSITIVE) NAME(CKR_ATTRIBUTE_TYPE_INVALID)
        NAME(CKR_ATTRIBUTE_VALUE_INVALID) NAME(CKR_DATA_INVALID) NAME(CKR_DATA_LEN_RANGE)
        NAME(CKR_DEVICE_ERROR) NAME(CKR_FUNCTION_NOT_PARALLEL) NAME(CKR_FUNCTION_NOT_SUPPORTED)
        NAME(CKR_KEY_HANDLE_INVALID) NAME(CKR_KEY_TYPE_INCONSISTENT) NAME(CKR_KEY_SIZE_RANGE)
        NAME(CKR_KEY_FUNCTION_NOT_PERMITTED) NAME(CKR_MECHANISM_INVALID) NAME(CKR_MECHANISM_PARAM_INVALID)
        NAME(CKR_OBJECT_HANDLE_INVALID) NAME(CKR_OPERATION_ACTIVE) NAME(CKR_OPERATION_NOT_INITIALIZED)
        NAME(CKR_PIN_INCORRECT) NAME(CKR_SESSION_HANDLE_INVALID) NAME(CKR_SESSION_PARALLEL_NOT_SUPPORTED)
        NAME(CKR_SESSION_READ_ONLY) NAME(CKR_SIGNATURE_INVALID) NAME(CKR_SIGNATURE_LEN_RANGE)
        NAME(CKR_TEMPLATE_INCONSISTENT) NAME(CKR_USER_ALREADY_LOGGED_IN) NAME(CKR_USER_NOT_LOGGED_IN)
        NAME(CKR_USER_TYPE_INVALID) NAME(CKR_BUFFER_TOO_SMALL) NAME(CKR_CRYPTOKI_NOT_INITIALIZED)
        NAME(CKR_CRYPTOKI_ALREADY_INITIALIZED) NAME(CKR_ACTION_PROHIBITED)
        NAME(CKR_RANDOM_SEED_NOT_SUPPORTED) NAME(CKR_SESSION_CLOSED)
#undef NAME
    }
    snprintf(other, sizeof other, "0x%lx", rv);
    return other;
}

static void failed(void)
{
    __atomic_fetch_add(&failures, 1, __ATOMIC_RELAXED); /* threads may fail too */
}

static void check(const char *name, CK_RV expected, CK_RV got)
{
    if (got == expected) {
        printf("ok %s\n", name);
    } else {
        printf("FAIL %s: expected %s", name, rv_name(expected));
        printf(" got %s\n", rv_name(got)); /* rv_name's buffer is reused */
        failed();
    }
}

static void truth(const char *name, int condition)
{
    if (condition) {
        printf("ok %s\n", name);
    } else {
        printf("FAIL %s: not true\n", name);
        failed();
    }
}

static void print_hex(const unsigned char *data, CK_ULONG len)
{
    for (CK_ULONG i = 0; i < len; i++)
        printf("%02x", data[i]);
}

/* A signature line for the test: MECH over HASH("abc"). */
static void print_sig(const char *mech, const char *hash, const unsigned char *sig, CK_ULONG len)
{
    printf("sig %s %s ", mech, hash);
    print_hex(sig, len);
    printf("\n");
}

/* -- inputs: digests of "abc" ----------------------------------------------------------------------- */

static unsigned char abc[] = "abc";
#define ABC_LEN 3

/* DigestInfo(SHA-256("abc")): CKM_RSA_PKCS input; the bare digest follows the 19-byte prefix. */
static unsigned char digest_info[] = {
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20,
    0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40, 0xde, 0x5d, 0xae, 0x22, 0x23,
    0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad};
#define SHA256_ABC (digest_info + 19)

/* DigestInfo(SHA-1("abc")): not SHA-2, so the module sends the block as it is (RSNULL). */
static unsigned char sha1_digest_info[] = {
    0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00, 0x04, 0x14,
    0xa9, 0x99, 0x3e, 0x36, 0x47, 0x06, 0x81, 0x6a, 0xba, 0x3e,
    0x25, 0x71, 0x78, 0x50, 0xc2, 0x6c, 0x9c, 0xd0, 0xd8, 0x9d};

/* SHA-384("abc"): an ECDSA digest longer than P-256's order, which ECDSA cuts to its leftmost bits. */
static unsigned char sha384_abc[] = {
    0xcb, 0x00, 0x75, 0x3f, 0x45, 0xa3, 0x5e, 0x8b, 0xb5, 0xa0, 0x3d, 0x69, 0x9a, 0xc6, 0x50, 0x07,
    0x27, 0x2c, 0x32, 0xab, 0x0e, 0xde, 0xd1, 0x63, 0x1a, 0x8b, 0x60, 0x5a, 0x43, 0xff, 0x5b, 0xed,
    0x80, 0x86, 0x07, 0x2b, 0xa1, 0xe7, 0xcc, 0x23, 0x58, 0xba, 0xec, 0xa1, 0x34, 0xc8, 0x25, 0xa7};

/* -- helpers ----------------------------------------------------------------------------------------- */

static CK_RV init_os_locking(void)
{
    CK_C_INITIALIZE_ARGS args = {0};
    args.flags = CKF_OS_LOCKING_OK; /* several threads will call the module */
    return p11->C_Initialize(&args);
}

static void initialize(void)
{
    check("C_Initialize(CKF_OS_LOCKING_OK)", CKR_OK, init_os_locking());
}

static CK_SESSION_HANDLE open_session(CK_FLAGS extra)
{
    CK_SESSION_HANDLE session = CK_INVALID_HANDLE;
    check("C_OpenSession", CKR_OK, p11->C_OpenSession(0, CKF_SERIAL_SESSION | extra, NULL, NULL, &session));
    return session;
}

/* The one object of `cls` with `label`; checks are quiet unless they fail (threads call this). */
static CK_OBJECT_HANDLE find(CK_SESSION_HANDLE session, const char *label, CK_OBJECT_CLASS cls)
{
    CK_ATTRIBUTE template[] = {{CKA_CLASS, &cls, sizeof cls}, {CKA_LABEL, (void *)label, strlen(label)}};
    CK_OBJECT_HANDLE found[2] = {CK_INVALID_HANDLE, CK_INVALID_HANDLE};
    CK_ULONG count = 0;
    CK_RV rv = p11->C_FindObjectsInit(session, template, 2);
    if (rv == CKR_OK)
        rv = p11->C_FindObjects(session, found, 2, &count);
    if (rv == CKR_OK)
        rv = p11->C_FindObjectsFinal(session);
    if (rv != CKR_OK || count != 1) {
        printf("FAIL find %s: %s, %lu objects\n", label, rv_name(rv), count);
        failed();
    }
    return found[0];
}

static CK_RV sign_with(CK_SESSION_HANDLE session, CK_MECHANISM *mech, CK_OBJECT_HANDLE key, unsigned char *data,
                       CK_ULONG len, unsigned char *out, CK_ULONG *out_len)
{
    CK_RV rv = p11->C_SignInit(session, mech, key);
    return rv != CKR_OK ? rv : p11->C_Sign(session, data, len, out, out_len);
}

static CK_RV sign_once(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE key, CK_MECHANISM_TYPE type, unsigned char *data,
                       CK_ULONG len, unsigned char *out, CK_ULONG *out_len)
{
    CK_MECHANISM mech = {type, NULL, 0};
    return sign_with(session, &mech, key, data, len, out, out_len);
}

/* No sign operation is active: C_Sign says so (a full buffer: were one active, it would end). */
static void no_sign_active(const char *name, CK_SESSION_HANDLE session)
{
    unsigned char sig[512];
    CK_ULONG len = sizeof sig;
    check(name, CKR_OPERATION_NOT_INITIALIZED, p11->C_Sign(session, SHA256_ABC, 32, sig, &len));
}

static CK_ULONG session_state(CK_SESSION_HANDLE session)
{
    CK_SESSION_INFO info = {0};
    CK_RV rv = p11->C_GetSessionInfo(session, &info);
    return rv == CKR_OK ? info.state : (CK_ULONG)-1;
}

/* "<client-id>:<client-secret>" from the environment the test gives the harness. */
static const char *principal_pin(void)
{
    static char pin[512];
    const char *id = getenv("MHSM_CLIENT_ID"), *secret = getenv("MHSM_CLIENT_SECRET");
    snprintf(pin, sizeof pin, "%s:%s", id ? id : "", secret ? secret : "");
    return pin;
}

static CK_RV login(CK_SESSION_HANDLE session, const char *pin)
{
    return p11->C_Login(session, CKU_USER, (unsigned char *)pin, strlen(pin));
}

/* -- the function list as a table ---------------------------------------------------------------------- */

/* `implemented`: 1 the module does the call; 0 a stub (CKR_FUNCTION_NOT_SUPPORTED); 2 a legacy
 * parallel-function call (CKR_FUNCTION_NOT_PARALLEL, PKCS#11 2.40 section 5.16). */
struct entry {
    const char *name;
    size_t offset;
    int implemented;
};
#define ENTRY(f, implemented) {#f, offsetof(CK_FUNCTION_LIST, f), implemented}
static const struct entry entries[] = {
    ENTRY(C_Initialize, 1), ENTRY(C_Finalize, 1), ENTRY(C_GetInfo, 1), ENTRY(C_GetFunctionList, 1),
    ENTRY(C_GetSlotList, 1), ENTRY(C_GetSlotInfo, 1), ENTRY(C_GetTokenInfo, 1), ENTRY(C_GetMechanismList, 1),
    ENTRY(C_GetMechanismInfo, 1), ENTRY(C_InitToken, 0), ENTRY(C_InitPIN, 0), ENTRY(C_SetPIN, 0),
    ENTRY(C_OpenSession, 1), ENTRY(C_CloseSession, 1), ENTRY(C_CloseAllSessions, 1), ENTRY(C_GetSessionInfo, 1),
    ENTRY(C_GetOperationState, 0), ENTRY(C_SetOperationState, 0), ENTRY(C_Login, 1), ENTRY(C_Logout, 1),
    ENTRY(C_CreateObject, 0), ENTRY(C_CopyObject, 0), ENTRY(C_DestroyObject, 0), ENTRY(C_GetObjectSize, 0),
    ENTRY(C_GetAttributeValue, 1), ENTRY(C_SetAttributeValue, 1), ENTRY(C_FindObjectsInit, 1),
    ENTRY(C_FindObjects, 1), ENTRY(C_FindObjectsFinal, 1), ENTRY(C_EncryptInit, 0), ENTRY(C_Encrypt, 0),
    ENTRY(C_EncryptUpdate, 0), ENTRY(C_EncryptFinal, 0), ENTRY(C_DecryptInit, 0), ENTRY(C_Decrypt, 0),
    ENTRY(C_DecryptUpdate, 0), ENTRY(C_DecryptFinal, 0), ENTRY(C_DigestInit, 0), ENTRY(C_Digest, 0),
    ENTRY(C_DigestUpdate, 0), ENTRY(C_DigestKey, 0), ENTRY(C_DigestFinal, 0), ENTRY(C_SignInit, 1),
    ENTRY(C_Sign, 1), ENTRY(C_SignUpdate, 1), ENTRY(C_SignFinal, 1), ENTRY(C_SignRecoverInit, 0),
    ENTRY(C_SignRecover, 0), ENTRY(C_VerifyInit, 1), ENTRY(C_Verify, 1), ENTRY(C_VerifyUpdate, 1),
    ENTRY(C_VerifyFinal, 1), ENTRY(C_VerifyRecoverInit, 0), ENTRY(C_VerifyRecover, 0),
    ENTRY(C_DigestEncryptUpdate, 0), ENTRY(C_DecryptDigestUpdate, 0), ENTRY(C_SignEncryptUpdate, 0),
    ENTRY(C_DecryptVerifyUpdate, 0), ENTRY(C_GenerateKey, 0), ENTRY(C_GenerateKeyPair, 1), ENTRY(C_WrapKey, 0),
    ENTRY(C_UnwrapKey, 0), ENTRY(C_DeriveKey, 0), ENTRY(C_SeedRandom, 1), ENTRY(C_GenerateRandom, 1),
    ENTRY(C_GetFunctionStatus, 2), ENTRY(C_CancelFunction, 2), ENTRY(C_WaitForSlotEvent, 0),
};
#define ENTRIES (sizeof entries / sizeof entries[0])

/* Every PKCS#11 parameter is a pointer or an integer of at most CK_ULONG's size, so on the ABIs this
 * runs on (x86-64, arm64: the first 8 arguments in registers) any entry may be called with zeros. */
typedef CK_RV (*any_call)(CK_ULONG, CK_ULONG, CK_ULONG, CK_ULONG, CK_ULONG, CK_ULONG, CK_ULONG, CK_ULONG);

static CK_RV call_with_zeros(const struct entry *e)
{
    any_call call;
    memcpy(&call, (const char *)p11 + e->offset, sizeof call);
    return call(0, 0, 0, 0, 0, 0, 0, 0);
}

static void check_table(void)
{
    truth("the table has the 68 entries of PKCS#11 2.40", ENTRIES == 68);
    truth("the table covers CK_FUNCTION_LIST",
          sizeof(CK_FUNCTION_LIST) == entries[0].offset + ENTRIES * sizeof(CK_C_Initialize) &&
              entries[ENTRIES - 1].offset == offsetof(CK_FUNCTION_LIST, C_WaitForSlotEvent));
}

/* -- scenarios ------------------------------------------------------------------------------------- */

static void scenario_uninitialized(void)
{
    char name[96];
    CK_FUNCTION_LIST *again = NULL;
    check_table();
    check("C_GetFunctionList(NULL)", CKR_ARGUMENTS_BAD, p11->C_GetFunctionList(NULL));
    check("C_GetFunctionList works before C_Initialize", CKR_OK, p11->C_GetFunctionList(&again));
    truth("the same list", again == p11);
    truth("version 2.40", p11->version.major == 2 && p11->version.minor == 40);
    for (size_t i = 0; i < ENTRIES; i++) {
        const char *f = entries[i].name;
        if (!strcmp(f, "C_Initialize") || !strcmp(f, "C_GetFunctionList"))
            continue;
        snprintf(name, sizeof name, "before C_Initialize: %s", f);
        check(name, CKR_CRYPTOKI_NOT_INITIALIZED, call_with_zeros(&entries[i]));
    }
    /* The same with real arguments: the refusal comes before any argument is looked at. */
    CK_INFO info;
    CK_ULONG count = 0;
    CK_SESSION_HANDLE session;
    check("C_Finalize(NULL) before C_Initialize", CKR_CRYPTOKI_NOT_INITIALIZED, p11->C_Finalize(NULL));
    check("C_GetInfo(&info) before C_Initialize", CKR_CRYPTOKI_NOT_INITIALIZED, p11->C_GetInfo(&info));
    check("C_GetSlotList(&count) before C_Initialize", CKR_CRYPTOKI_NOT_INITIALIZED,
          p11->C_GetSlotList(CK_FALSE, NULL, &count));
    check("C_OpenSession(slot 0) before C_Initialize", CKR_CRYPTOKI_NOT_INITIALIZED,
          p11->C_OpenSession(0, CKF_SERIAL_SESSION, NULL, NULL, &session));
}

static CK_RV mutex_create(void **mutex)
{
    *mutex = malloc(1);
    return *mutex ? CKR_OK : CKR_HOST_MEMORY;
}

static CK_RV mutex_destroy(void *mutex)
{
    free(mutex);
    return CKR_OK;
}

static CK_RV mutex_nothing(void *mutex)
{
    (void)mutex;
    return CKR_OK;
}

static void scenario_init(void)
{
    char name[96];
    CK_INFO info;
    CK_C_INITIALIZE_ARGS reserved = {0}, one = {0}, three = {0}, all = {0};
    reserved.pReserved = &reserved;
    one.CreateMutex = mutex_create;
    three.CreateMutex = all.CreateMutex = mutex_create;
    three.DestroyMutex = all.DestroyMutex = mutex_destroy;
    three.LockMutex = all.LockMutex = mutex_nothing;
    all.UnlockMutex = mutex_nothing;
    all.flags = CKF_OS_LOCKING_OK;

    check("pReserved set", CKR_ARGUMENTS_BAD, p11->C_Initialize(&reserved));
    check("one mutex callback of four", CKR_ARGUMENTS_BAD, p11->C_Initialize(&one));
    check("three mutex callbacks of four", CKR_ARGUMENTS_BAD, p11->C_Initialize(&three));
    check("a refused C_Initialize initialised nothing", CKR_CRYPTOKI_NOT_INITIALIZED, p11->C_GetInfo(&info));
    check("all four callbacks with CKF_OS_LOCKING_OK", CKR_OK, p11->C_Initialize(&all));
    check("C_Initialize twice", CKR_CRYPTOKI_ALREADY_INITIALIZED, p11->C_Initialize(NULL));
    check("C_Initialize twice, with arguments", CKR_CRYPTOKI_ALREADY_INITIALIZED, init_os_locking());
    check("C_Finalize(non-NULL)", CKR_ARGUMENTS_BAD, p11->C_Finalize(&all));
    check("still initialised", CKR_OK, p11->C_GetInfo(&info));
    truth("cryptoki 2.40", info.cryptokiVersion.major == 2 && info.cryptokiVersion.minor == 40);
    for (size_t i = 0; i < ENTRIES; i++) {
        if (entries[i].implemented == 1)
            continue;
        snprintf(name, sizeof name, "not supported: %s", entries[i].name);
        check(name, entries[i].implemented ? CKR_FUNCTION_NOT_PARALLEL : CKR_FUNCTION_NOT_SUPPORTED,
              call_with_zeros(&entries[i]));
    }
    check("C_Finalize", CKR_OK, p11->C_Finalize(NULL));
    check("C_Finalize twice", CKR_CRYPTOKI_NOT_INITIALIZED, p11->C_Finalize(NULL));
    check("C_GetInfo after C_Finalize", CKR_CRYPTOKI_NOT_INITIALIZED, p11->C_GetInfo(&info));
    check("C_Initialize(NULL) after C_Finalize", CKR_OK, p11->C_Initialize(NULL));
    check("C_Initialize(NULL) twice", CKR_CRYPTOKI_ALREADY_INITIALIZED, p11->C_Initialize(NULL));
    check("C_Finalize", CKR_OK, p11->C_Finalize(NULL));

    /* Each restart is a fresh state: no session, no operation, no login from before survives it. */
    CK_SESSION_HANDLE before = CK_INVALID_HANDLE;
    CK_MECHANISM ecdsa = {CKM_ECDSA, NULL, 0};
    for (int round = 1; round <= 3; round++) {
        snprintf(name, sizeof name, "round %d: C_Initialize", round);
        check(name, CKR_OK, init_os_locking());
        if (before != CK_INVALID_HANDLE) {
            snprintf(name, sizeof name, "round %d: the last round's session is gone", round);
            check(name, CKR_SESSION_HANDLE_INVALID, p11->C_SignInit(before, &ecdsa, CK_INVALID_HANDLE));
        }
        CK_SESSION_HANDLE session = open_session(0);
        snprintf(name, sizeof name, "round %d: a public session", round);
        truth(name, session_state(session) == CKS_RO_PUBLIC_SESSION);
        CK_OBJECT_HANDLE key = find(session, ec_label, CKO_PRIVATE_KEY);
        snprintf(name, sizeof name, "round %d: C_Login", round);
        check(name, CKR_OK, login(session, ""));
        snprintf(name, sizeof name, "round %d: C_SignInit", round);
        check(name, CKR_OK, p11->C_SignInit(session, &ecdsa, key));
        /* C_Finalize with a session open, logged in, and an operation active */
        snprintf(name, sizeof name, "round %d: C_Finalize", round);
        check(name, CKR_OK, p11->C_Finalize(NULL));
        snprintf(name, sizeof name, "round %d: the session died with C_Finalize", round);
        check(name, CKR_CRYPTOKI_NOT_INITIALIZED, p11->C_CloseSession(session));
        before = session;
    }
}

static void scenario_bad_args(void)
{
    initialize();
    const CK_SESSION_HANDLE bad = 987654;
    const CK_OBJECT_HANDLE no_object = 99999;
    CK_SLOT_ID slots[4];
    CK_ULONG count = 0, len = 0;
    CK_SLOT_INFO slot_info;
    CK_TOKEN_INFO token_info;
    CK_MECHANISM_INFO mech_info;
    CK_MECHANISM_TYPE mechs[64];
    CK_SESSION_INFO session_info;
    CK_SESSION_HANDLE session;
    CK_OBJECT_HANDLE handles[4], pub_handle, priv_handle;
    unsigned char buffer[512], random[300];
    CK_MECHANISM ecdsa = {CKM_ECDSA, NULL, 0}, rsa_pkcs = {CKM_RSA_PKCS, NULL, 0};
    CK_MECHANISM keygen = {CKM_EC_KEY_PAIR_GEN, NULL, 0};

    /* NULL where a result goes */
    check("C_GetInfo(NULL)", CKR_ARGUMENTS_BAD, p11->C_GetInfo(NULL));
    check("C_GetSlotList(NULL count)", CKR_ARGUMENTS_BAD, p11->C_GetSlotList(CK_FALSE, slots, NULL));
    check("C_GetSlotInfo(NULL)", CKR_ARGUMENTS_BAD, p11->C_GetSlotInfo(0, NULL));
    check("C_GetTokenInfo(NULL)", CKR_ARGUMENTS_BAD, p11->C_GetTokenInfo(0, NULL));
    check("C_GetMechanismList(NULL count)", CKR_ARGUMENTS_BAD, p11->C_GetMechanismList(0, mechs, NULL));
    check("C_GetMechanismInfo(NULL)", CKR_ARGUMENTS_BAD, p11->C_GetMechanismInfo(0, CKM_ECDSA, NULL));
    check("C_OpenSession(NULL handle)", CKR_ARGUMENTS_BAD, p11->C_OpenSession(0, CKF_SERIAL_SESSION, NULL, NULL, NULL));

    /* sizes */
    check("C_GetSlotList size query", CKR_OK, p11->C_GetSlotList(CK_FALSE, NULL, &count));
    truth("one slot", count == 1);
    count = 0;
    check("C_GetSlotList short", CKR_BUFFER_TOO_SMALL, p11->C_GetSlotList(CK_TRUE, slots, &count));
    truth("a short list gives the count", count == 1);
    count = 4;
    check("C_GetSlotList", CKR_OK, p11->C_GetSlotList(CK_TRUE, slots, &count));
    truth("slot 0", count == 1 && slots[0] == 0);
    count = 0;
    check("C_GetMechanismList size query", CKR_OK, p11->C_GetMechanismList(0, NULL, &count));
    truth("some mechanisms", count > 4 && count <= 64);
    len = 1;
    check("C_GetMechanismList short", CKR_BUFFER_TOO_SMALL, p11->C_GetMechanismList(0, mechs, &len));
    truth("a short list gives the count", len == count);

    /* bad slot */
    check("C_GetSlotInfo(bad slot)", CKR_SLOT_ID_INVALID, p11->C_GetSlotInfo(99, &slot_info));
    check("C_GetTokenInfo(bad slot)", CKR_SLOT_ID_INVALID, p11->C_GetTokenInfo(99, &token_info));
    check("C_GetMechanismList(bad slot)", CKR_SLOT_ID_INVALID, p11->C_GetMechanismList(99, NULL, &count));
    check("C_GetMechanismInfo(bad slot)", CKR_SLOT_ID_INVALID, p11->C_GetMechanismInfo(99, CKM_ECDSA, &mech_info));
    check("C_OpenSession(bad slot)", CKR_SLOT_ID_INVALID,
          p11->C_OpenSession(99, CKF_SERIAL_SESSION, NULL, NULL, &session));
    check("C_CloseAllSessions(bad slot)", CKR_SLOT_ID_INVALID, p11->C_CloseAllSessions(99));

    /* mechanisms */
    check("C_GetMechanismInfo(CKM_SHA1_RSA_PKCS)", CKR_MECHANISM_INVALID,
          p11->C_GetMechanismInfo(0, CKM_SHA1_RSA_PKCS, &mech_info));
    check("C_GetMechanismInfo(CKM_ECDSA)", CKR_OK, p11->C_GetMechanismInfo(0, CKM_ECDSA, &mech_info));
    truth("CKM_ECDSA signs and verifies", (mech_info.flags & (CKF_SIGN | CKF_VERIFY)) == (CKF_SIGN | CKF_VERIFY));
    check("C_OpenSession without CKF_SERIAL_SESSION", CKR_SESSION_PARALLEL_NOT_SUPPORTED,
          p11->C_OpenSession(0, CKF_RW_SESSION, NULL, NULL, &session));

    /* bad session handle, everywhere one is taken (all other arguments valid) */
    CK_ATTRIBUTE label_query = {CKA_LABEL, NULL, 0};
    CK_SESSION_HANDLE none[] = {bad, CK_INVALID_HANDLE};
    for (int i = 0; i < 2; i++) {
        CK_SESSION_HANDLE s = none[i];
        printf("# session handle %lu\n", s);
        check("C_CloseSession(bad session)", CKR_SESSION_HANDLE_INVALID, p11->C_CloseSession(s));
        check("C_GetSessionInfo(bad session)", CKR_SESSION_HANDLE_INVALID, p11->C_GetSessionInfo(s, &session_info));
        check("C_Login(bad session)", CKR_SESSION_HANDLE_INVALID, login(s, ""));
        check("C_Logout(bad session)", CKR_SESSION_HANDLE_INVALID, p11->C_Logout(s));
        check("C_FindObjectsInit(bad session)", CKR_SESSION_HANDLE_INVALID, p11->C_FindObjectsInit(s, NULL, 0));
        check("C_FindObjects(bad session)", CKR_SESSION_HANDLE_INVALID, p11->C_FindObjects(s, handles, 4, &count));
        check("C_FindObjectsFinal(bad session)", CKR_SESSION_HANDLE_INVALID, p11->C_FindObjectsFinal(s));
        check("C_GetAttributeValue(bad session)", CKR_SESSION_HANDLE_INVALID,
              p11->C_GetAttributeValue(s, 1, &label_query, 1));
        check("C_SetAttributeValue(bad session)", CKR_SESSION_HANDLE_INVALID,
              p11->C_SetAttributeValue(s, 1, &label_query, 1));
        check("C_SignInit(bad session)", CKR_SESSION_HANDLE_INVALID, p11->C_SignInit(s, &ecdsa, 1));
        len = sizeof buffer;
        check("C_Sign(bad session)", CKR_SESSION_HANDLE_INVALID, p11->C_Sign(s, SHA256_ABC, 32, buffer, &len));
        check("C_SignUpdate(bad session)", CKR_SESSION_HANDLE_INVALID, p11->C_SignUpdate(s, abc, ABC_LEN));
        check("C_SignFinal(bad session)", CKR_SESSION_HANDLE_INVALID, p11->C_SignFinal(s, buffer, &len));
        check("C_VerifyInit(bad session)", CKR_SESSION_HANDLE_INVALID, p11->C_VerifyInit(s, &ecdsa, 1));
        check("C_Verify(bad session)", CKR_SESSION_HANDLE_INVALID, p11->C_Verify(s, SHA256_ABC, 32, buffer, 64));
        check("C_VerifyUpdate(bad session)", CKR_SESSION_HANDLE_INVALID, p11->C_VerifyUpdate(s, abc, ABC_LEN));
        check("C_VerifyFinal(bad session)", CKR_SESSION_HANDLE_INVALID, p11->C_VerifyFinal(s, buffer, 64));
        check("C_GenerateKeyPair(bad session)", CKR_SESSION_HANDLE_INVALID,
              p11->C_GenerateKeyPair(s, &keygen, NULL, 0, NULL, 0, &pub_handle, &priv_handle));
        check("C_GenerateRandom(bad session)", CKR_SESSION_HANDLE_INVALID, p11->C_GenerateRandom(s, random, 16));
    }

    session = open_session(0);
    CK_SESSION_HANDLE rw = open_session(CKF_RW_SESSION);
    check("C_GetSessionInfo(NULL)", CKR_ARGUMENTS_BAD, p11->C_GetSessionInfo(session, NULL));

    /* finding */
    CK_OBJECT_CLASS private_class = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE no_value = {CKA_CLASS, NULL, sizeof private_class};
    check("C_FindObjects before C_FindObjectsInit", CKR_OPERATION_NOT_INITIALIZED,
          p11->C_FindObjects(session, handles, 4, &count));
    check("C_FindObjectsFinal before C_FindObjectsInit", CKR_OPERATION_NOT_INITIALIZED,
          p11->C_FindObjectsFinal(session));
    check("C_FindObjectsInit(NULL template, count 1)", CKR_ARGUMENTS_BAD, p11->C_FindObjectsInit(session, NULL, 1));
    check("C_FindObjectsInit(a NULL value with a length)", CKR_ATTRIBUTE_VALUE_INVALID,
          p11->C_FindObjectsInit(session, &no_value, 1));
    check("C_FindObjectsInit(every object)", CKR_OK, p11->C_FindObjectsInit(session, NULL, 0));
    check("C_FindObjectsInit twice", CKR_OPERATION_ACTIVE, p11->C_FindObjectsInit(session, NULL, 0));
    check("C_FindObjects(NULL handles)", CKR_ARGUMENTS_BAD, p11->C_FindObjects(session, NULL, 4, &count));
    check("C_FindObjects(NULL count)", CKR_ARGUMENTS_BAD, p11->C_FindObjects(session, handles, 4, NULL));
    check("C_FindObjects after those errors", CKR_OK, p11->C_FindObjects(session, handles, 4, &count));
    truth("finds objects", count >= 4);
    check("C_FindObjectsFinal", CKR_OK, p11->C_FindObjectsFinal(session));
    check("C_FindObjectsFinal twice", CKR_OPERATION_NOT_INITIALIZED, p11->C_FindObjectsFinal(session));
    CK_OBJECT_HANDLE key = find(session, rsa_label, CKO_PRIVATE_KEY);
    CK_OBJECT_HANDLE pub = find(session, rsa_label, CKO_PUBLIC_KEY);
    CK_OBJECT_HANDLE ec = find(session, ec_label, CKO_PRIVATE_KEY);

    /* attributes */
    unsigned char small[1];
    CK_ATTRIBUTE sensitive = {CKA_PRIVATE_EXPONENT, buffer, sizeof buffer};
    check("CKA_PRIVATE_EXPONENT of a private key", CKR_ATTRIBUTE_SENSITIVE,
          p11->C_GetAttributeValue(session, key, &sensitive, 1));
    truth("a sensitive length is unavailable", sensitive.ulValueLen == CK_UNAVAILABLE_INFORMATION);
    CK_ATTRIBUTE ec_secret = {CKA_VALUE, NULL, 0};
    check("CKA_VALUE of an EC private key", CKR_ATTRIBUTE_SENSITIVE,
          p11->C_GetAttributeValue(session, ec, &ec_secret, 1));
    sensitive.ulValueLen = sizeof buffer;
    check("CKA_PRIVATE_EXPONENT of a public key", CKR_ATTRIBUTE_TYPE_INVALID,
          p11->C_GetAttributeValue(session, pub, &sensitive, 1));
    CK_ATTRIBUTE short_buffer = {CKA_MODULUS, small, sizeof small};
    check("CKA_MODULUS in 1 byte", CKR_BUFFER_TOO_SMALL, p11->C_GetAttributeValue(session, key, &short_buffer, 1));
    truth("a short buffer's length is unavailable", short_buffer.ulValueLen == CK_UNAVAILABLE_INFORMATION);
    CK_ATTRIBUTE size_query = {CKA_MODULUS, NULL, 0};
    check("CKA_MODULUS size", CKR_OK, p11->C_GetAttributeValue(session, key, &size_query, 1));
    truth("the modulus is 256 bytes", size_query.ulValueLen == 256);
    CK_ULONG bits = 0;
    CK_ATTRIBUTE mixed[] = {{CKA_PRIVATE_EXPONENT, buffer, sizeof buffer},
                            {CKA_MODULUS_BITS, &bits, sizeof bits},
                            {0x7ffffff0UL, buffer, sizeof buffer}};
    check("a template with a sensitive, a good and an unknown attribute", CKR_ATTRIBUTE_SENSITIVE,
          p11->C_GetAttributeValue(session, key, mixed, 3));
    truth("the good attribute is filled in anyway", bits == 2048 && mixed[1].ulValueLen == sizeof bits);
    truth("the others are unavailable", mixed[0].ulValueLen == CK_UNAVAILABLE_INFORMATION &&
                                            mixed[2].ulValueLen == CK_UNAVAILABLE_INFORMATION);
    CK_ATTRIBUTE unknown = {0x7ffffff0UL, buffer, sizeof buffer};
    check("an unknown attribute", CKR_ATTRIBUTE_TYPE_INVALID, p11->C_GetAttributeValue(session, key, &unknown, 1));
    check("C_GetAttributeValue(NULL template, count 1)", CKR_ARGUMENTS_BAD,
          p11->C_GetAttributeValue(session, key, NULL, 1));
    check("C_GetAttributeValue(bad object)", CKR_OBJECT_HANDLE_INVALID,
          p11->C_GetAttributeValue(session, no_object, &size_query, 1));
    check("C_GetAttributeValue(object 0)", CKR_OBJECT_HANDLE_INVALID,
          p11->C_GetAttributeValue(session, CK_INVALID_HANDLE, &size_query, 1));
    CK_ATTRIBUTE new_modulus = {CKA_MODULUS, buffer, 4};
    check("C_SetAttributeValue(CKA_MODULUS)", CKR_ATTRIBUTE_READ_ONLY,
          p11->C_SetAttributeValue(rw, key, &new_modulus, 1));
    check("C_SetAttributeValue(NULL template, count 1)", CKR_ARGUMENTS_BAD, p11->C_SetAttributeValue(rw, key, NULL, 1));
    check("C_SetAttributeValue(bad object)", CKR_OBJECT_HANDLE_INVALID,
          p11->C_SetAttributeValue(rw, no_object, &new_modulus, 1));
    CK_ATTRIBUTE relabel = {CKA_LABEL, (void *)"x", 1};
    check("C_SetAttributeValue in a read-only session", CKR_SESSION_READ_ONLY,
          p11->C_SetAttributeValue(session, key, &relabel, 1));

    /* sign and verify arguments: none of these errors leaves an operation behind */
    CK_MECHANISM unknown_mech = {0x80001234UL, NULL, 0}, ecdsa_param = {CKM_ECDSA, buffer, 8};
    check("C_SignInit(NULL mechanism)", CKR_ARGUMENTS_BAD, p11->C_SignInit(session, NULL, key));
    check("C_SignInit(unknown mechanism)", CKR_MECHANISM_INVALID, p11->C_SignInit(session, &unknown_mech, key));
    check("C_SignInit(key-generation mechanism)", CKR_MECHANISM_INVALID, p11->C_SignInit(session, &keygen, ec));
    check("C_SignInit(bad key)", CKR_KEY_HANDLE_INVALID, p11->C_SignInit(session, &rsa_pkcs, no_object));
    check("C_SignInit(key 0)", CKR_KEY_HANDLE_INVALID, p11->C_SignInit(session, &rsa_pkcs, CK_INVALID_HANDLE));
    check("C_SignInit(ECDSA, RSA key)", CKR_KEY_TYPE_INCONSISTENT, p11->C_SignInit(session, &ecdsa, key));
    check("C_SignInit(ECDSA with a parameter)", CKR_MECHANISM_PARAM_INVALID,
          p11->C_SignInit(session, &ecdsa_param, ec));
    check("C_SignInit(public key)", CKR_KEY_FUNCTION_NOT_PERMITTED, p11->C_SignInit(session, &rsa_pkcs, pub));
    no_sign_active("no sign operation after those", session);
    check("C_VerifyInit(NULL mechanism)", CKR_ARGUMENTS_BAD, p11->C_VerifyInit(session, NULL, pub));
    check("C_VerifyInit(unknown mechanism)", CKR_MECHANISM_INVALID, p11->C_VerifyInit(session, &unknown_mech, pub));
    check("C_VerifyInit(bad key)", CKR_KEY_HANDLE_INVALID, p11->C_VerifyInit(session, &rsa_pkcs, no_object));
    check("C_Verify without C_VerifyInit", CKR_OPERATION_NOT_INITIALIZED,
          p11->C_Verify(session, digest_info, sizeof digest_info, buffer, 256));

    /* RSA-PSS parameters: Managed HSM has MGF1 with the same hash and salt = digest length only */
#define PSS_SIZE sizeof(CK_RSA_PKCS_PSS_PARAMS)
    struct {
        const char *name;
        CK_MECHANISM_TYPE type;
        CK_RSA_PKCS_PSS_PARAMS params;
        CK_ULONG length; /* of the parameter: 0 for none at all */
    } pss_cases[] = {
        {"PSS without parameters", CKM_RSA_PKCS_PSS, {0, 0, 0}, 0},
        {"PSS with a short parameter", CKM_RSA_PKCS_PSS, {CKM_SHA256, CKG_MGF1_SHA256, 32}, 4},
        {"PSS with salt 20 over SHA-256", CKM_RSA_PKCS_PSS, {CKM_SHA256, CKG_MGF1_SHA256, 20}, PSS_SIZE},
        {"PSS with MGF1-SHA384 over SHA-256", CKM_RSA_PKCS_PSS, {CKM_SHA256, CKG_MGF1_SHA384, 32}, PSS_SIZE},
        {"PSS over SHA-1", CKM_RSA_PKCS_PSS, {CKM_SHA_1, CKG_MGF1_SHA1, 20}, PSS_SIZE},
        {"SHA384-PSS with SHA-256 parameters", CKM_SHA384_RSA_PKCS_PSS, {CKM_SHA256, CKG_MGF1_SHA256, 32}, PSS_SIZE},
    };
    for (size_t i = 0; i < sizeof pss_cases / sizeof pss_cases[0]; i++) {
        CK_MECHANISM pss = {pss_cases[i].type, pss_cases[i].length ? &pss_cases[i].params : NULL, pss_cases[i].length};
        check(pss_cases[i].name, CKR_MECHANISM_PARAM_INVALID, p11->C_SignInit(session, &pss, key));
    }
    no_sign_active("no sign operation after bad PSS parameters", session);

    /* login */
    check("C_Login(SO)", CKR_USER_TYPE_INVALID, p11->C_Login(session, CKU_SO, NULL, 0));
    check("C_Login(NULL PIN, length 4)", CKR_ARGUMENTS_BAD, p11->C_Login(session, CKU_USER, NULL, 4));
    check("C_Logout when not logged in", CKR_USER_NOT_LOGGED_IN, p11->C_Logout(session));

    /* key generation */
    CK_ULONG rsa_bits = 1024;
    CK_ATTRIBUTE rsa_pub[] = {{CKA_MODULUS_BITS, &rsa_bits, sizeof rsa_bits}};
    CK_MECHANISM rsa_keygen = {CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0};
    CK_MECHANISM keygen_param = {CKM_RSA_PKCS_KEY_PAIR_GEN, buffer, 4};
    CK_BBOOL token_true = CK_TRUE;
    CK_ATTRIBUTE token_pub[] = {{CKA_MODULUS_BITS, &rsa_bits, sizeof rsa_bits}, {CKA_TOKEN, &token_true, 1}};
    check("C_GenerateKeyPair of token objects in a read-only session", CKR_SESSION_READ_ONLY,
          p11->C_GenerateKeyPair(session, &rsa_keygen, token_pub, 2, NULL, 0, &pub_handle, &priv_handle));
    check("C_GenerateKeyPair(1024 bits)", CKR_ATTRIBUTE_VALUE_INVALID,
          p11->C_GenerateKeyPair(rw, &rsa_keygen, rsa_pub, 1, NULL, 0, &pub_handle, &priv_handle));
    check("C_GenerateKeyPair(NULL mechanism)", CKR_ARGUMENTS_BAD,
          p11->C_GenerateKeyPair(rw, NULL, rsa_pub, 1, NULL, 0, &pub_handle, &priv_handle));
    check("C_GenerateKeyPair(NULL handles)", CKR_ARGUMENTS_BAD,
          p11->C_GenerateKeyPair(rw, &rsa_keygen, rsa_pub, 1, NULL, 0, NULL, &priv_handle));
    check("C_GenerateKeyPair(NULL template, count 1)", CKR_ARGUMENTS_BAD,
          p11->C_GenerateKeyPair(rw, &rsa_keygen, NULL, 1, NULL, 0, &pub_handle, &priv_handle));
    check("C_GenerateKeyPair(CKM_ECDSA)", CKR_MECHANISM_INVALID,
          p11->C_GenerateKeyPair(rw, &ecdsa, rsa_pub, 1, NULL, 0, &pub_handle, &priv_handle));
    check("C_GenerateKeyPair(with a parameter)", CKR_MECHANISM_PARAM_INVALID,
          p11->C_GenerateKeyPair(rw, &keygen_param, rsa_pub, 1, NULL, 0, &pub_handle, &priv_handle));
    CK_BBOOL yes = CK_TRUE;
    CK_ATTRIBUTE extractable[] = {{CKA_EXTRACTABLE, &yes, sizeof yes}};
    rsa_bits = 2048;
    check("C_GenerateKeyPair(extractable)", CKR_ATTRIBUTE_VALUE_INVALID,
          p11->C_GenerateKeyPair(rw, &rsa_keygen, rsa_pub, 1, extractable, 1, &pub_handle, &priv_handle));
    CK_ATTRIBUTE twice[] = {{CKA_MODULUS_BITS, &rsa_bits, sizeof rsa_bits},
                            {CKA_MODULUS_BITS, &rsa_bits, sizeof rsa_bits}};
    check("C_GenerateKeyPair(an attribute twice)", CKR_TEMPLATE_INCONSISTENT,
          p11->C_GenerateKeyPair(rw, &rsa_keygen, twice, 2, NULL, 0, &pub_handle, &priv_handle));

    /* random */
    check("C_GenerateRandom(NULL, 16)", CKR_ARGUMENTS_BAD, p11->C_GenerateRandom(session, NULL, 16));
    check("C_GenerateRandom(NULL, 0)", CKR_OK, p11->C_GenerateRandom(session, NULL, 0));
    memset(random, 0, sizeof random);
    check("C_GenerateRandom(300)", CKR_OK, p11->C_GenerateRandom(session, random, sizeof random));
    int zeros = 0;
    for (size_t i = 0; i < sizeof random; i++)
        zeros += random[i] == 0;
    truth("random bytes are not all zero", zeros < 20);

    /* after all those errors the session signs */
    len = sizeof buffer;
    check("the session still signs", CKR_OK, sign_once(session, key, CKM_RSA_PKCS, digest_info, sizeof digest_info,
                                                         buffer, &len));
    signatures++;
    check("C_CloseSession", CKR_OK, p11->C_CloseSession(session));
    check("C_CloseSession twice", CKR_SESSION_HANDLE_INVALID, p11->C_CloseSession(session));
    check("C_CloseAllSessions", CKR_OK, p11->C_CloseAllSessions(0));
    check("C_CloseAllSessions closed the read/write one", CKR_SESSION_HANDLE_INVALID, p11->C_CloseSession(rw));
    check("C_Finalize", CKR_OK, p11->C_Finalize(NULL));
}

static void scenario_login(void)
{
    initialize();
    CK_TOKEN_INFO token;
    check("C_GetTokenInfo", CKR_OK, p11->C_GetTokenInfo(0, &token));
    truth("token initialised, with a user PIN and an RNG",
          (token.flags & (CKF_TOKEN_INITIALIZED | CKF_USER_PIN_INITIALIZED | CKF_RNG)) ==
              (CKF_TOKEN_INITIALIZED | CKF_USER_PIN_INITIALIZED | CKF_RNG));
    truth("no CKF_LOGIN_REQUIRED (docs/pkcs11.md: the Entra credential, not a PIN)",
          !(token.flags & CKF_LOGIN_REQUIRED));

    CK_SESSION_HANDLE ro = open_session(0), rw = open_session(CKF_RW_SESSION);
    truth("read-only public session", session_state(ro) == CKS_RO_PUBLIC_SESSION);
    truth("read/write public session", session_state(rw) == CKS_RW_PUBLIC_SESSION);
    check("C_GetTokenInfo", CKR_OK, p11->C_GetTokenInfo(0, &token));
    truth("the token counts 2 sessions, 1 read/write", token.ulSessionCount == 2 && token.ulRwSessionCount == 1);
    CK_OBJECT_HANDLE key = find(ro, ec_label, CKO_PRIVATE_KEY); /* no login needed (docs/pkcs11.md) */
    CK_BBOOL is_private = CK_FALSE;
    CK_ATTRIBUTE private_attr = {CKA_PRIVATE, &is_private, sizeof is_private};
    check("CKA_PRIVATE", CKR_OK, p11->C_GetAttributeValue(ro, key, &private_attr, 1));
    truth("the private key has CKA_PRIVATE true", is_private == CK_TRUE);

    check("C_Login(CKU_CONTEXT_SPECIFIC) with no operation", CKR_OPERATION_NOT_INITIALIZED,
          p11->C_Login(ro, CKU_CONTEXT_SPECIFIC, NULL, 0));
    check("C_Login(wrong secret)", CKR_PIN_INCORRECT, login(ro, "00000000-0000-0000-0000-000000000000:nope"));
    truth("a refused login leaves the session public", session_state(ro) == CKS_RO_PUBLIC_SESSION);
    check("C_Login(the principal's PIN)", CKR_OK, login(ro, principal_pin()));
    truth("read-only user session", session_state(ro) == CKS_RO_USER_FUNCTIONS);
    truth("login is per token: the other session too", session_state(rw) == CKS_RW_USER_FUNCTIONS);
    check("C_Login twice", CKR_USER_ALREADY_LOGGED_IN, login(rw, principal_pin()));
    unsigned char sig[132];
    CK_ULONG len = sizeof sig;
    check("signs logged in", CKR_OK, sign_once(ro, key, CKM_ECDSA, SHA256_ABC, 32, sig, &len));
    signatures++;
    print_sig("ECDSA", "SHA256", sig, len);
    check("C_Logout", CKR_OK, p11->C_Logout(rw));
    truth("public again", session_state(ro) == CKS_RO_PUBLIC_SESSION);
    check("C_Logout twice", CKR_USER_NOT_LOGGED_IN, p11->C_Logout(ro));

    check("C_Login(empty PIN: the environment's principal)", CKR_OK, p11->C_Login(ro, CKU_USER, NULL, 0));
    check("C_CloseSession (one left)", CKR_OK, p11->C_CloseSession(ro));
    truth("still logged in", session_state(rw) == CKS_RW_USER_FUNCTIONS);
    check("C_CloseSession (the last)", CKR_OK, p11->C_CloseSession(rw));
    CK_SESSION_HANDLE again = open_session(0);
    truth("closing the last session logged the token out", session_state(again) == CKS_RO_PUBLIC_SESSION);
    check("C_Logout in the new session", CKR_USER_NOT_LOGGED_IN, p11->C_Logout(again));
    check("C_Login(a PIN that is not a principal: ignored)", CKR_OK, login(again, "1234"));
    len = sizeof sig;
    check("signs with the environment's principal", CKR_OK,
          sign_once(again, key, CKM_ECDSA, SHA256_ABC, 32, sig, &len));
    signatures++;
    check("C_Finalize", CKR_OK, p11->C_Finalize(NULL));
}

static void print_public(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE rsa, CK_OBJECT_HANDLE ec)
{
    unsigned char n[512], e[16], point[160];
    CK_ATTRIBUTE rsa_attrs[] = {{CKA_MODULUS, n, sizeof n}, {CKA_PUBLIC_EXPONENT, e, sizeof e}};
    CK_ATTRIBUTE ec_attr = {CKA_EC_POINT, point, sizeof point};
    check("CKA_MODULUS, CKA_PUBLIC_EXPONENT", CKR_OK, p11->C_GetAttributeValue(session, rsa, rsa_attrs, 2));
    check("CKA_EC_POINT", CKR_OK, p11->C_GetAttributeValue(session, ec, &ec_attr, 1));
    printf("pub RSA ");
    print_hex(n, rsa_attrs[0].ulValueLen);
    printf(" ");
    print_hex(e, rsa_attrs[1].ulValueLen);
    printf("\npub EC ");
    print_hex(point, ec_attr.ulValueLen);
    printf("\n");
}

static void scenario_sign_states(void)
{
    initialize();
    CK_SESSION_HANDLE session = open_session(0);
    CK_OBJECT_HANDLE rsa = find(session, rsa_label, CKO_PRIVATE_KEY), ec = find(session, ec_label, CKO_PRIVATE_KEY);
    CK_OBJECT_HANDLE rsa_pub = find(session, rsa_label, CKO_PUBLIC_KEY);
    CK_RSA_PKCS_PSS_PARAMS pss_params = {CKM_SHA256, CKG_MGF1_SHA256, 32};
    CK_MECHANISM pkcs = {CKM_RSA_PKCS, NULL, 0}, ecdsa = {CKM_ECDSA, NULL, 0}, hashed = {CKM_SHA256_RSA_PKCS, NULL, 0};
    CK_MECHANISM pss = {CKM_RSA_PKCS_PSS, &pss_params, sizeof pss_params};
    unsigned char sig[512], sig2[512], too_long[300];
    CK_ULONG len = 0, len2 = sizeof sig2;
    print_public(session, rsa, ec);

    /* size query and CKR_BUFFER_TOO_SMALL keep the operation; C_SignInit meanwhile is refused */
    check("C_Sign without C_SignInit", CKR_OPERATION_NOT_INITIALIZED,
          p11->C_Sign(session, digest_info, sizeof digest_info, NULL, &len));
    check("C_SignInit", CKR_OK, p11->C_SignInit(session, &pkcs, rsa));
    check("C_SignInit while active", CKR_OPERATION_ACTIVE, p11->C_SignInit(session, &pkcs, rsa));
    check("size query", CKR_OK, p11->C_Sign(session, digest_info, sizeof digest_info, NULL, &len));
    truth("the size is the modulus length", len == 256);
    check("C_SignInit after a size query", CKR_OPERATION_ACTIVE, p11->C_SignInit(session, &ecdsa, ec));
    len = 10;
    check("short buffer", CKR_BUFFER_TOO_SMALL, p11->C_Sign(session, digest_info, sizeof digest_info, sig, &len));
    truth("a short buffer gives the length", len == 256);
    check("C_SignInit after a short buffer", CKR_OPERATION_ACTIVE, p11->C_SignInit(session, &ecdsa, ec));
    check("sign after both (still active)", CKR_OK, p11->C_Sign(session, digest_info, sizeof digest_info, sig, &len));
    signatures++;
    truth("256 bytes", len == 256);
    print_sig("RSA_PKCS", "SHA256", sig, len);
    no_sign_active("a signature ends the operation", session);

    /* an error in the middle of a sign ends the operation; a new C_SignInit works */
    struct {
        const char *name;
        CK_MECHANISM *mech;
        CK_OBJECT_HANDLE key;
        unsigned char *data;
        CK_ULONG len;
        CK_RV expected;
    } errors[] = {
        {"ECDSA over 10 bytes", &ecdsa, ec, SHA256_ABC, 10, CKR_DATA_LEN_RANGE},
        {"ECDSA over 0 bytes", &ecdsa, ec, SHA256_ABC, 0, CKR_DATA_LEN_RANGE},
        {"PSS over a 20-byte digest", &pss, rsa, SHA256_ABC, 20, CKR_DATA_LEN_RANGE},
        {"PSS over a 33-byte digest", &pss, rsa, digest_info + 18, 33, CKR_DATA_LEN_RANGE},
        {"RSA_PKCS over 300 bytes", &pkcs, rsa, too_long, sizeof too_long, CKR_DATA_LEN_RANGE},
        {"RSA_PKCS over 0 bytes", &pkcs, rsa, digest_info, 0, CKR_DATA_LEN_RANGE},
        {"C_Sign(NULL data, length 32)", &ecdsa, ec, NULL, 32, CKR_ARGUMENTS_BAD},
    };
    memset(too_long, 1, sizeof too_long);
    for (size_t i = 0; i < sizeof errors / sizeof errors[0]; i++) {
        char name[96];
        check("C_SignInit", CKR_OK, p11->C_SignInit(session, errors[i].mech, errors[i].key));
        len = sizeof sig;
        check(errors[i].name, errors[i].expected, p11->C_Sign(session, errors[i].data, errors[i].len, sig, &len));
        snprintf(name, sizeof name, "%s: the operation ended", errors[i].name);
        no_sign_active(name, session);
    }
    check("C_SignInit(ECDSA)", CKR_OK, p11->C_SignInit(session, &ecdsa, ec));
    check("C_Sign(NULL length)", CKR_ARGUMENTS_BAD, p11->C_Sign(session, SHA256_ABC, 32, sig, NULL));
    check("a NULL length ended it too", CKR_OK, p11->C_SignInit(session, &ecdsa, ec));
    len = sizeof sig;
    check("ECDSA", CKR_OK, p11->C_Sign(session, SHA256_ABC, 32, sig, &len));
    signatures++;
    truth("raw r||s of P-256", len == 64);
    print_sig("ECDSA", "SHA256", sig, len);
    len = sizeof sig;
    check("ECDSA over a SHA-384 digest", CKR_OK, sign_once(session, ec, CKM_ECDSA, sha384_abc, 48, sig, &len));
    signatures++;
    print_sig("ECDSA", "SHA384", sig, len);
    len = sizeof sig;
    check("PSS", CKR_OK, sign_with(session, &pss, rsa, SHA256_ABC, 32, sig, &len));
    signatures++;
    print_sig("PSS", "SHA256", sig, len);
    len = sizeof sig;
    check("RSA_PKCS over a SHA-1 DigestInfo", CKR_OK,
          sign_once(session, rsa, CKM_RSA_PKCS, sha1_digest_info, sizeof sha1_digest_info, sig, &len));
    signatures++;
    print_sig("RSA_PKCS", "SHA1", sig, len);

    /* multi-part */
    check("C_SignInit(raw RSA_PKCS)", CKR_OK, p11->C_SignInit(session, &pkcs, rsa));
    check("C_SignUpdate on a raw mechanism", CKR_FUNCTION_NOT_SUPPORTED, p11->C_SignUpdate(session, digest_info, 5));
    no_sign_active("the refused C_SignUpdate ended the operation", session);
    check("C_SignFinal without C_SignInit", CKR_OPERATION_NOT_INITIALIZED, p11->C_SignFinal(session, sig, &len));
    check("C_SignInit(SHA256_RSA_PKCS)", CKR_OK, p11->C_SignInit(session, &hashed, rsa));
    check("C_SignUpdate(NULL, 3)", CKR_ARGUMENTS_BAD, p11->C_SignUpdate(session, NULL, 3));
    check("the bad C_SignUpdate ended the operation", CKR_OPERATION_NOT_INITIALIZED,
          p11->C_SignUpdate(session, abc, 1));
    check("C_SignInit(SHA256_RSA_PKCS)", CKR_OK, p11->C_SignInit(session, &hashed, rsa));
    check("C_SignUpdate 'a'", CKR_OK, p11->C_SignUpdate(session, abc, 1));
    check("C_SignUpdate ''", CKR_OK, p11->C_SignUpdate(session, abc + 1, 0));
    check("C_SignUpdate 'bc'", CKR_OK, p11->C_SignUpdate(session, abc + 1, 2));
    check("C_SignFinal size query", CKR_OK, p11->C_SignFinal(session, NULL, &len));
    truth("C_SignFinal size", len == 256);
    len = 1;
    check("C_SignFinal short buffer", CKR_BUFFER_TOO_SMALL, p11->C_SignFinal(session, sig, &len));
    check("C_SignInit while multi-part", CKR_OPERATION_ACTIVE, p11->C_SignInit(session, &hashed, rsa));
    len = sizeof sig;
    check("C_SignFinal", CKR_OK, p11->C_SignFinal(session, sig, &len));
    signatures++;
    check("C_SignFinal ended it", CKR_OPERATION_NOT_INITIALIZED, p11->C_SignFinal(session, sig, &len));
    check("single-part", CKR_OK, sign_once(session, rsa, CKM_SHA256_RSA_PKCS, abc, ABC_LEN, sig2, &len2));
    signatures++;
    truth("multi-part equals single-part (PKCS#1 v1.5 is deterministic)", len == len2 && !memcmp(sig, sig2, len));
    len2 = sizeof sig2;
    check("RSA_PKCS over the DigestInfo", CKR_OK,
          sign_once(session, rsa, CKM_RSA_PKCS, digest_info, sizeof digest_info, sig2, &len2));
    signatures++;
    truth("equals SHA256_RSA_PKCS over the data", len == len2 && !memcmp(sig, sig2, len));
    print_sig("RSA_PKCS", "SHA256", sig, len);

    /* verify: local, and its errors end the operation as well */
    check("C_VerifyInit", CKR_OK, p11->C_VerifyInit(session, &hashed, rsa_pub));
    check("C_VerifyInit while active", CKR_OPERATION_ACTIVE, p11->C_VerifyInit(session, &hashed, rsa_pub));
    check("C_Verify", CKR_OK, p11->C_Verify(session, abc, ABC_LEN, sig, len));
    check("C_Verify ended it", CKR_OPERATION_NOT_INITIALIZED, p11->C_Verify(session, abc, ABC_LEN, sig, len));
    sig[10] ^= 1;
    check("C_VerifyInit", CKR_OK, p11->C_VerifyInit(session, &hashed, rsa_pub));
    check("a changed signature", CKR_SIGNATURE_INVALID, p11->C_Verify(session, abc, ABC_LEN, sig, len));
    check("C_VerifyInit after CKR_SIGNATURE_INVALID", CKR_OK, p11->C_VerifyInit(session, &hashed, rsa_pub));
    check("a short signature", CKR_SIGNATURE_LEN_RANGE, p11->C_Verify(session, abc, ABC_LEN, sig, 12));
    sig[10] ^= 1;
    check("C_VerifyInit after CKR_SIGNATURE_LEN_RANGE", CKR_OK, p11->C_VerifyInit(session, &hashed, rsa));
    check("C_VerifyUpdate", CKR_OK, p11->C_VerifyUpdate(session, abc, ABC_LEN));
    check("C_VerifyFinal (with the private key's object)", CKR_OK, p11->C_VerifyFinal(session, sig, len));
    check("C_VerifyInit(raw RSA_PKCS)", CKR_OK, p11->C_VerifyInit(session, &pkcs, rsa_pub));
    check("C_Verify(raw RSA_PKCS)", CKR_OK, p11->C_Verify(session, digest_info, sizeof digest_info, sig, len));

    /* one sign and one verify operation may be active together */
    check("C_VerifyInit", CKR_OK, p11->C_VerifyInit(session, &hashed, rsa_pub));
    check("C_SignInit while a verify is active", CKR_OK, p11->C_SignInit(session, &ecdsa, ec));
    check("C_VerifyUpdate meanwhile", CKR_OK, p11->C_VerifyUpdate(session, abc, ABC_LEN));
    len2 = sizeof sig2;
    check("C_Sign meanwhile", CKR_OK, p11->C_Sign(session, SHA256_ABC, 32, sig2, &len2));
    signatures++;
    check("C_VerifyFinal", CKR_OK, p11->C_VerifyFinal(session, sig, len));

    /* closing a session with an operation active is fine, and the next session starts clean */
    check("C_SignInit", CKR_OK, p11->C_SignInit(session, &ecdsa, ec));
    check("C_CloseSession with an operation active", CKR_OK, p11->C_CloseSession(session));
    CK_SESSION_HANDLE next = open_session(0);
    check("C_SignInit in a new session", CKR_OK, p11->C_SignInit(next, &ecdsa, ec));
    check("C_Finalize", CKR_OK, p11->C_Finalize(NULL));
}

/* -- threads --------------------------------------------------------------------------------------- */

enum { SIGNS_PER_THREAD = 8, MAX_THREADS = 8, DEADLINE_SECONDS = 60 };

struct worker {
    CK_SESSION_HANDLE session; /* CK_INVALID_HANDLE: open, find, sign and close a session per sign */
    CK_OBJECT_HANDLE key, pub;
    CK_MECHANISM_TYPE mech;
    int signed_ok, verified, busy, unexpected;
    CK_RV first_unexpected;
};

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void unexpected(struct worker *w, CK_RV rv)
{
    if (!w->unexpected++)
        w->first_unexpected = rv;
}

static void *sign_loop(void *arg)
{
    struct worker *w = arg;
    const double deadline = now() + DEADLINE_SECONDS;
    const struct timespec pause = {0, 200000};
    while (w->signed_ok < SIGNS_PER_THREAD && w->unexpected < 5 && now() < deadline) {
        unsigned char sig[512];
        CK_ULONG len = sizeof sig;
        CK_SESSION_HANDLE session = w->session;
        CK_RV rv;
        if (session == CK_INVALID_HANDLE) {
            rv = p11->C_OpenSession(0, CKF_SERIAL_SESSION, NULL, NULL, &session);
            if (rv != CKR_OK) {
                unexpected(w, rv);
                continue;
            }
            w->key = find(session, ec_label, CKO_PRIVATE_KEY);
        }
        if (w->mech == CKM_SHA256_RSA_PKCS)
            rv = sign_once(session, w->key, w->mech, abc, ABC_LEN, sig, &len);
        else
            rv = sign_once(session, w->key, w->mech, SHA256_ABC, 32, sig, &len);
        if (rv == CKR_OK) {
            w->signed_ok++;
            if (w->pub != CK_INVALID_HANDLE) { /* a session of its own: verify there too */
                CK_MECHANISM mech = {w->mech, NULL, 0};
                rv = p11->C_VerifyInit(session, &mech, w->pub);
                if (rv == CKR_OK)
                    rv = w->mech == CKM_SHA256_RSA_PKCS ? p11->C_Verify(session, abc, ABC_LEN, sig, len)
                                                        : p11->C_Verify(session, SHA256_ABC, 32, sig, len);
                if (rv == CKR_OK)
                    w->verified++;
                else
                    unexpected(w, rv);
            }
        } else if (rv == CKR_OPERATION_ACTIVE && w->session != CK_INVALID_HANDLE) {
            w->busy++; /* a thread sharing this session is between its C_SignInit and C_Sign */
            nanosleep(&pause, NULL);
        } else {
            unexpected(w, rv);
        }
        if (w->session == CK_INVALID_HANDLE && (rv = p11->C_CloseSession(session)) != CKR_OK)
            unexpected(w, rv);
    }
    return NULL;
}

/* `sessions`: "own" (one each, kept), "shared" (all on one), "fresh" (a new one per sign). */
static void run_threads(const char *name, int count, const char *sessions, CK_OBJECT_HANDLE keys[2],
                        CK_OBJECT_HANDLE pubs[2])
{
    pthread_t threads[MAX_THREADS];
    struct worker workers[MAX_THREADS];
    CK_SESSION_HANDLE one = !strcmp(sessions, "shared") ? open_session(0) : CK_INVALID_HANDLE;
    memset(workers, 0, sizeof workers);
    for (int i = 0; i < count; i++) {
        struct worker *w = &workers[i];
        int rsa = !strcmp(sessions, "own") && i % 2; /* own sessions: RSA and EC, verified */
        w->mech = rsa ? CKM_SHA256_RSA_PKCS : CKM_ECDSA;
        w->key = keys[rsa];
        if (!strcmp(sessions, "own")) {
            w->session = open_session(0);
            w->pub = pubs[rsa];
        } else {
            w->session = one;
        }
        if (pthread_create(&threads[i], NULL, sign_loop, w) != 0) {
            printf("FAIL %s: pthread_create\n", name);
            exit(100);
        }
    }
    int ok = 0, verified = 0, busy = 0, bad = 0;
    CK_RV first = CKR_OK;
    for (int i = 0; i < count; i++) {
        pthread_join(threads[i], NULL);
        ok += workers[i].signed_ok;
        verified += workers[i].verified;
        busy += workers[i].busy;
        if (workers[i].unexpected && !bad)
            first = workers[i].first_unexpected;
        bad += workers[i].unexpected;
        if (!strcmp(sessions, "own"))
            p11->C_CloseSession(workers[i].session);
    }
    signatures += ok;
    printf("# %s: %d signatures, %d verified, %d CKR_OPERATION_ACTIVE, %d unexpected (first %s)\n", name, ok,
           verified, busy, bad, rv_name(first));
    truth(name, ok == count * SIGNS_PER_THREAD && bad == 0);
    if (!strcmp(sessions, "own"))
        truth("every signature verified", verified == ok);
}

static void scenario_threads(void)
{
    initialize();
    CK_SESSION_HANDLE session = open_session(0);
    CK_OBJECT_HANDLE keys[2] = {find(session, ec_label, CKO_PRIVATE_KEY), find(session, rsa_label, CKO_PRIVATE_KEY)};
    CK_OBJECT_HANDLE pubs[2] = {find(session, ec_label, CKO_PUBLIC_KEY), find(session, rsa_label, CKO_PUBLIC_KEY)};
    run_threads("8 threads on 8 sessions", 8, "own", keys, pubs);
    run_threads("4 threads on one session", 4, "shared", keys, pubs);
    run_threads("4 threads opening a session per sign", 4, "fresh", keys, pubs);
    CK_SESSION_INFO info;
    check("the first session is untouched", CKR_OK, p11->C_GetSessionInfo(session, &info));
    check("C_Finalize", CKR_OK, p11->C_Finalize(NULL));
}

/* -- fork ------------------------------------------------------------------------------------------ */

static void scenario_fork(void)
{
    initialize();
    CK_SESSION_HANDLE session = open_session(0);
    check("parent: C_Login", CKR_OK, login(session, principal_pin()));
    CK_OBJECT_HANDLE key = find(session, ec_label, CKO_PRIVATE_KEY);
    unsigned char sig[132];
    CK_ULONG len = sizeof sig;
    check("parent signs before fork", CKR_OK, sign_once(session, key, CKM_ECDSA, SHA256_ABC, 32, sig, &len));
    signatures++;
    CK_MECHANISM ecdsa = {CKM_ECDSA, NULL, 0};
    check("parent: a find and a sign operation active across fork", CKR_OK, p11->C_FindObjectsInit(session, NULL, 0));
    check("parent: C_SignInit before fork", CKR_OK, p11->C_SignInit(session, &ecdsa, key));
    fflush(stdout);
    pid_t child = fork();
    if (child == 0) {
        CK_INFO info;
        failures = 0;
        check("child: the parent's session before C_Initialize", CKR_CRYPTOKI_NOT_INITIALIZED,
              p11->C_Sign(session, SHA256_ABC, 32, sig, &len));
        check("child: C_GetInfo before C_Initialize", CKR_CRYPTOKI_NOT_INITIALIZED, p11->C_GetInfo(&info));
        check("child: C_Finalize before C_Initialize", CKR_CRYPTOKI_NOT_INITIALIZED, p11->C_Finalize(NULL));
        check("child: C_Initialize", CKR_OK, init_os_locking());
        check("child: C_Initialize twice", CKR_CRYPTOKI_ALREADY_INITIALIZED, p11->C_Initialize(NULL));
        check("child: the parent's session is gone", CKR_SESSION_HANDLE_INVALID,
              p11->C_Sign(session, SHA256_ABC, 32, sig, &len));
        CK_SESSION_HANDLE mine = open_session(0);
        truth("child: not logged in", session_state(mine) == CKS_RO_PUBLIC_SESSION);
        check("child: C_Login", CKR_OK, login(mine, principal_pin()));
        CK_OBJECT_HANDLE again = find(mine, ec_label, CKO_PRIVATE_KEY);
        truth("child: the same object handle", again == key);
        len = sizeof sig;
        check("child: signs", CKR_OK, sign_once(mine, again, CKM_ECDSA, SHA256_ABC, 32, sig, &len));
        print_sig("ECDSA", "SHA256", sig, len);
        check("child: C_Finalize", CKR_OK, p11->C_Finalize(NULL));
        check("child: C_Initialize after C_Finalize", CKR_OK, p11->C_Initialize(NULL));
        check("child: C_Finalize", CKR_OK, p11->C_Finalize(NULL));
        fflush(stdout);
        exit(failures); /* exit(), not _exit(): the child's atexit handlers must not hurt the parent */
    }
    int status = 0;
    truth("fork", child > 0);
    truth("waitpid", waitpid(child, &status, 0) == child);
    truth("the child exited with no failed check", WIFEXITED(status) && WEXITSTATUS(status) == 0);
    signatures++;
    truth("parent: still logged in", session_state(session) == CKS_RO_USER_FUNCTIONS);
    CK_OBJECT_HANDLE handles[4];
    CK_ULONG count = 0;
    check("parent: the find goes on", CKR_OK, p11->C_FindObjects(session, handles, 4, &count));
    truth("parent: found objects", count > 0);
    check("parent: C_FindObjectsFinal", CKR_OK, p11->C_FindObjectsFinal(session));
    len = sizeof sig;
    check("parent: the sign goes on", CKR_OK, p11->C_Sign(session, SHA256_ABC, 32, sig, &len));
    signatures++;
    print_sig("ECDSA", "SHA256", sig, len);
    check("C_Finalize", CKR_OK, p11->C_Finalize(NULL));
}

/* fork() while other threads are in the middle of signs: the child must not inherit a lock one of
 * them held (it would hang in C_Initialize or in its first sign), nor their sessions. */
static int keep_signing = 1;

static void *sign_until_told(void *arg)
{
    struct worker *w = arg;
    while (__atomic_load_n(&keep_signing, __ATOMIC_RELAXED)) {
        unsigned char sig[132];
        CK_ULONG len = sizeof sig;
        CK_RV rv = sign_once(w->session, w->key, CKM_ECDSA, SHA256_ABC, 32, sig, &len);
        if (rv == CKR_OK)
            w->signed_ok++;
        else
            unexpected(w, rv);
    }
    return NULL;
}

static void scenario_fork_threads(void)
{
    enum { THREADS = 4, CHILDREN = 6 };
    initialize();
    CK_SESSION_HANDLE session = open_session(0);
    CK_OBJECT_HANDLE key = find(session, ec_label, CKO_PRIVATE_KEY);
    pthread_t threads[THREADS];
    struct worker workers[THREADS];
    memset(workers, 0, sizeof workers);
    for (int i = 0; i < THREADS; i++) {
        workers[i].session = open_session(0);
        workers[i].key = key;
        if (pthread_create(&threads[i], NULL, sign_until_told, &workers[i]) != 0) {
            printf("FAIL pthread_create\n");
            exit(100);
        }
    }
    int children_ok = 0;
    for (int c = 0; c < CHILDREN; c++) {
        /* 0, 6, 12... ms apart: the first forks land in the threads' first signs (the lazy imports) */
        const struct timespec pause = {0, c * 6 * 1000 * 1000L};
        nanosleep(&pause, NULL);
        fflush(stdout);
        pid_t child = fork();
        if (child == 0) {
            unsigned char sig[132];
            CK_ULONG len = sizeof sig;
            CK_SESSION_HANDLE mine = CK_INVALID_HANDLE;
            alarm(20); /* a hang is a failure, not a stuck test */
            int ok = init_os_locking() == CKR_OK &&
                     p11->C_OpenSession(0, CKF_SERIAL_SESSION, NULL, NULL, &mine) == CKR_OK &&
                     sign_once(mine, key, CKM_ECDSA, SHA256_ABC, 32, sig, &len) == CKR_OK &&
                     p11->C_Finalize(NULL) == CKR_OK;
            _exit(ok ? 0 : 1);
        }
        int status = 0;
        waitpid(child, &status, 0);
        if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
            children_ok++;
        else
            printf("# child %d: status 0x%x\n", c, status);
    }
    __atomic_store_n(&keep_signing, 0, __ATOMIC_RELAXED);
    int ok = 0, bad = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(threads[i], NULL);
        ok += workers[i].signed_ok;
        bad += workers[i].unexpected;
    }
    signatures += ok + children_ok;
    printf("# %d children signed, the threads made %d signatures meanwhile\n", children_ok, ok);
    truth("every child initialised and signed while the parent's threads signed", children_ok == CHILDREN);
    truth("the parent's threads went on signing without an error", bad == 0 && ok > 0);
    check("C_Finalize", CKR_OK, p11->C_Finalize(NULL));
}

/* -- conformance: codes the 2.40 text gives, and session objects ---------------------------------------- */

static int session_keys; /* session keys made: each is printed for the test, which checks none is left */

/* A session key pair (CKA_TOKEN absent: false) labelled "<prefix>-<pid>-<n>"; the label is printed. */
static CK_RV make_session_key(CK_SESSION_HANDLE session, CK_MECHANISM_TYPE type, char *label, size_t size,
                              CK_OBJECT_HANDLE *pub, CK_OBJECT_HANDLE *priv)
{
    static CK_BYTE p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
    static CK_BYTE e4[] = {0x00, 0x01, 0x00, 0x01}, e3[] = {0x01, 0x00, 0x01};
    CK_ULONG bits = 2048;
    CK_MECHANISM mech = {type, NULL, 0};
    snprintf(label, size, "session-%d-%d", (int)getpid(), ++session_keys);
    printf("session-key %s\n", label);
    CK_ATTRIBUTE rsa_pub[] = {{CKA_MODULUS_BITS, &bits, sizeof bits}, {CKA_PUBLIC_EXPONENT, e4, sizeof e4},
                              {CKA_LABEL, label, strlen(label)}};
    CK_ATTRIBUTE rsa_priv[] = {{CKA_PUBLIC_EXPONENT, e3, sizeof e3}}; /* the same 65537, encoded shorter */
    CK_ATTRIBUTE ec_pub[] = {{CKA_EC_PARAMS, p256, sizeof p256}, {CKA_LABEL, label, strlen(label)}};
    if (type == CKM_RSA_PKCS_KEY_PAIR_GEN)
        return p11->C_GenerateKeyPair(session, &mech, rsa_pub, 3, rsa_priv, 1, pub, priv);
    return p11->C_GenerateKeyPair(session, &mech, ec_pub, 2, NULL, 0, pub, priv);
}

static CK_ULONG count_label(CK_SESSION_HANDLE session, const char *label)
{
    CK_ATTRIBUTE template[] = {{CKA_LABEL, (void *)label, strlen(label)}};
    CK_OBJECT_HANDLE found[4];
    CK_ULONG count = 0;
    if (p11->C_FindObjectsInit(session, template, 1) != CKR_OK)
        return 99;
    p11->C_FindObjects(session, found, 4, &count);
    p11->C_FindObjectsFinal(session);
    return count;
}

static void scenario_conformance(void)
{
    initialize();
    CK_SESSION_HANDLE ro = open_session(0), other = open_session(0), rw = open_session(CKF_RW_SESSION);
    unsigned char seed[4] = {1, 2, 3, 4}, sig[512];
    CK_ULONG len;
    char label[64], label2[64], label3[64];
    CK_OBJECT_HANDLE pub, priv, pub2, priv2;

    /* C_SeedRandom: the session first, then the arguments, then "no seeding" */
    check("C_SeedRandom(bad session)", CKR_SESSION_HANDLE_INVALID, p11->C_SeedRandom(987654, seed, sizeof seed));
    check("C_SeedRandom(NULL, 4)", CKR_ARGUMENTS_BAD, p11->C_SeedRandom(ro, NULL, 4));
    check("C_SeedRandom", CKR_RANDOM_SEED_NOT_SUPPORTED, p11->C_SeedRandom(ro, seed, sizeof seed));

    /* contradictions are CKR_TEMPLATE_INCONSISTENT; one impossible value CKR_ATTRIBUTE_VALUE_INVALID */
    CK_ULONG bits = 2048;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_BYTE three[] = {0x03};
    CK_MECHANISM rsa_keygen = {CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0};
    CK_ATTRIBUTE token_pub[] = {{CKA_MODULUS_BITS, &bits, sizeof bits}, {CKA_TOKEN, &yes, 1}};
    CK_ATTRIBUTE session_priv[] = {{CKA_TOKEN, &no, 1}};
    check("CKA_TOKEN true for the public key, false for the private", CKR_TEMPLATE_INCONSISTENT,
          p11->C_GenerateKeyPair(rw, &rsa_keygen, token_pub, 2, session_priv, 1, &pub, &priv));
    CK_ATTRIBUTE dates[] = {{CKA_MODULUS_BITS, &bits, sizeof bits}, {CKA_START_DATE, "20300101", 8},
                            {CKA_END_DATE, "20290101", 8}};
    check("CKA_START_DATE after CKA_END_DATE", CKR_TEMPLATE_INCONSISTENT,
          p11->C_GenerateKeyPair(ro, &rsa_keygen, dates, 3, NULL, 0, &pub, &priv));
    CK_ATTRIBUTE split_dates_pub[] = {{CKA_MODULUS_BITS, &bits, sizeof bits}, {CKA_START_DATE, "20300101", 8}};
    CK_ATTRIBUTE split_dates_priv[] = {{CKA_END_DATE, "20290101", 8}};
    check("a start in one template after the end in the other", CKR_TEMPLATE_INCONSISTENT,
          p11->C_GenerateKeyPair(ro, &rsa_keygen, split_dates_pub, 2, split_dates_priv, 1, &pub, &priv));
    CK_ULONG other_bits = 3072;
    CK_ATTRIBUTE bits_priv[] = {{CKA_MODULUS_BITS, &other_bits, sizeof other_bits}};
    check("two modulus sizes", CKR_TEMPLATE_INCONSISTENT,
          p11->C_GenerateKeyPair(ro, &rsa_keygen, token_pub, 1, bits_priv, 1, &pub, &priv));
    CK_KEY_TYPE ec_type = CKK_EC;
    CK_ATTRIBUTE wrong_type[] = {{CKA_MODULUS_BITS, &bits, sizeof bits}, {CKA_KEY_TYPE, &ec_type, sizeof ec_type}};
    check("CKA_KEY_TYPE EC with the RSA mechanism", CKR_TEMPLATE_INCONSISTENT,
          p11->C_GenerateKeyPair(ro, &rsa_keygen, wrong_type, 2, NULL, 0, &pub, &priv));
    CK_ATTRIBUTE exponent3[] = {{CKA_MODULUS_BITS, &bits, sizeof bits}, {CKA_PUBLIC_EXPONENT, three, 1}};
    check("public exponent 3", CKR_ATTRIBUTE_VALUE_INVALID,
          p11->C_GenerateKeyPair(ro, &rsa_keygen, exponent3, 2, NULL, 0, &pub, &priv));
    check("token objects in a read-only session", CKR_SESSION_READ_ONLY,
          p11->C_GenerateKeyPair(ro, &rsa_keygen, token_pub, 2, NULL, 0, &pub, &priv));

    /* session objects: made in a read-only session, seen by the application's other sessions, gone
     * (deleted and purged in the HSM) when the session that made them closes */
    check("a session RSA key in a read-only session (exponent 00 01 00 01)", CKR_OK,
          make_session_key(ro, CKM_RSA_PKCS_KEY_PAIR_GEN, label, sizeof label, &pub, &priv));
    CK_BBOOL token = CK_TRUE;
    CK_ATTRIBUTE token_attr = {CKA_TOKEN, &token, sizeof token};
    check("CKA_TOKEN of the session key", CKR_OK, p11->C_GetAttributeValue(ro, priv, &token_attr, 1));
    truth("is false", token == CK_FALSE);
    truth("another session of the application finds both objects", count_label(other, label) == 2);
    len = sizeof sig;
    check("the session key signs", CKR_OK,
          sign_once(other, priv, CKM_RSA_PKCS, digest_info, sizeof digest_info, sig, &len));
    signatures++;
    CK_MECHANISM pkcs = {CKM_RSA_PKCS, NULL, 0};
    check("C_VerifyInit with its public key", CKR_OK, p11->C_VerifyInit(other, &pkcs, pub));
    check("the signature verifies", CKR_OK, p11->C_Verify(other, digest_info, sizeof digest_info, sig, len));
    CK_ATTRIBUTE relabel = {CKA_SUBJECT, (void *)"\x30\x00", 2};
    check("a session object changes in a read-only session", CKR_OK, p11->C_SetAttributeValue(ro, priv, &relabel, 1));
    check("C_CloseSession of the session that made it", CKR_OK, p11->C_CloseSession(ro));
    check("its objects are gone", CKR_OBJECT_HANDLE_INVALID, p11->C_GetAttributeValue(other, priv, &token_attr, 1));
    check("and cannot sign", CKR_KEY_HANDLE_INVALID, p11->C_SignInit(other, &pkcs, priv));
    truth("no session finds them", count_label(other, label) == 0);

    check("a session EC key", CKR_OK, make_session_key(other, CKM_EC_KEY_PAIR_GEN, label2, sizeof label2, &pub2, &priv2));
    truth("found", count_label(rw, label2) == 2);
    check("C_CloseAllSessions", CKR_OK, p11->C_CloseAllSessions(0));
    CK_SESSION_HANDLE after = open_session(0);
    truth("C_CloseAllSessions removed it", count_label(after, label2) == 0);
    check("a session key, then C_Finalize", CKR_OK,
          make_session_key(after, CKM_EC_KEY_PAIR_GEN, label3, sizeof label3, &pub2, &priv2));
    check("C_Finalize", CKR_OK, p11->C_Finalize(NULL));
    initialize();
    CK_SESSION_HANDLE again = open_session(0);
    truth("C_Finalize removed it", count_label(again, label3) == 0);
    check("C_Finalize", CKR_OK, p11->C_Finalize(NULL));
}

/* -- HSM faults -------------------------------------------------------------------------------------- */

/* The test has injected faults on the emulator's "sign" operation: either enough for each of the
 * first two signs to exhaust the retries (`expected` CKR_DEVICE_ERROR), or few enough for the
 * retries to absorb them (CKR_OK). */
static void hsm_signs(CK_RV expected)
{
    initialize();
    CK_SESSION_HANDLE session = open_session(0);
    CK_OBJECT_HANDLE ec = find(session, ec_label, CKO_PRIVATE_KEY), rsa = find(session, rsa_label, CKO_PRIVATE_KEY);
    CK_MECHANISM hashed = {CKM_SHA256_RSA_PKCS, NULL, 0};
    unsigned char sig[512];
    CK_ULONG len = sizeof sig;

    check("single-part sign during the fault", expected, sign_once(session, ec, CKM_ECDSA, SHA256_ABC, 32, sig, &len));
    if (expected == CKR_OK) {
        signatures++;
        print_sig("ECDSA", "SHA256", sig, len);
    }
    no_sign_active("single-part: the operation ended", session);
    check("C_SignInit(SHA256_RSA_PKCS)", CKR_OK, p11->C_SignInit(session, &hashed, rsa));
    check("C_SignUpdate", CKR_OK, p11->C_SignUpdate(session, abc, ABC_LEN));
    check("C_SignFinal size query (no HSM call)", CKR_OK, p11->C_SignFinal(session, NULL, &len));
    len = sizeof sig;
    check("C_SignFinal during the fault", expected, p11->C_SignFinal(session, sig, &len));
    if (expected == CKR_OK) {
        signatures++;
        print_sig("RSA_PKCS", "SHA256", sig, len);
    }
    check("multi-part: the operation ended", CKR_OPERATION_NOT_INITIALIZED, p11->C_SignUpdate(session, abc, 1));
    truth("the session is fine", session_state(session) == CKS_RO_PUBLIC_SESSION);

    len = sizeof sig;
    check("the next single-part sign works", CKR_OK, sign_once(session, ec, CKM_ECDSA, SHA256_ABC, 32, sig, &len));
    signatures++;
    print_sig("ECDSA", "SHA256", sig, len);
    len = sizeof sig;
    check("the next multi-part sign works", CKR_OK,
          sign_once(session, rsa, CKM_SHA256_RSA_PKCS, abc, ABC_LEN, sig, &len));
    signatures++;
    print_sig("RSA_PKCS", "SHA256", sig, len);
    check("C_Finalize", CKR_OK, p11->C_Finalize(NULL));
}

static void scenario_hsm_fault(void)
{
    hsm_signs(CKR_DEVICE_ERROR);
}

static void scenario_hsm_retried(void)
{
    hsm_signs(CKR_OK);
}

/* The test has injected one fault on the emulator's "list" operation: the first search meets it. */
static void scenario_find_fault(void)
{
    initialize();
    CK_SESSION_HANDLE session = open_session(0);
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE template[] = {{CKA_CLASS, &cls, sizeof cls}, {CKA_LABEL, (void *)ec_label, strlen(ec_label)}};
    CK_OBJECT_HANDLE found[2];
    CK_ULONG count = 0;
    check("C_FindObjectsInit during the fault", CKR_DEVICE_ERROR, p11->C_FindObjectsInit(session, template, 2));
    check("no search was left active", CKR_OPERATION_NOT_INITIALIZED, p11->C_FindObjects(session, found, 2, &count));
    check("nothing to finish", CKR_OPERATION_NOT_INITIALIZED, p11->C_FindObjectsFinal(session));
    CK_OBJECT_HANDLE key = find(session, ec_label, CKO_PRIVATE_KEY);
    unsigned char sig[132];
    CK_ULONG len = sizeof sig;
    check("the next search finds the key, which signs", CKR_OK,
          sign_once(session, key, CKM_ECDSA, SHA256_ABC, 32, sig, &len));
    signatures++;
    print_sig("ECDSA", "SHA256", sig, len);
    check("C_Finalize", CKR_OK, p11->C_Finalize(NULL));
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: %s MODULE SCENARIO RSA_LABEL EC_LABEL\n", argv[0]);
        return 100;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    rsa_label = argv[3];
    ec_label = argv[4];
    void *module = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!module) {
        fprintf(stderr, "dlopen: %s\n", dlerror());
        return 100;
    }
    void *symbol = dlsym(module, "C_GetFunctionList");
    CK_C_GetFunctionList get_list;
    memcpy(&get_list, &symbol, sizeof get_list); /* a data pointer to a function pointer, as POSIX allows */
    if (!get_list || get_list(&p11) != CKR_OK || !p11) {
        fprintf(stderr, "no function list\n");
        return 100;
    }
    static const struct {
        const char *name;
        void (*run)(void);
    } scenarios[] = {
        {"uninitialized", scenario_uninitialized}, {"init", scenario_init},
        {"bad_args", scenario_bad_args},           {"login", scenario_login},
        {"sign_states", scenario_sign_states},     {"threads", scenario_threads},
        {"fork", scenario_fork},                   {"fork_threads", scenario_fork_threads},
        {"hsm_fault", scenario_hsm_fault},         {"hsm_retried", scenario_hsm_retried},
        {"find_fault", scenario_find_fault},       {"conformance", scenario_conformance},
    };
    for (size_t i = 0; i < sizeof scenarios / sizeof scenarios[0]; i++) {
        if (!strcmp(argv[2], scenarios[i].name)) {
            scenarios[i].run();
            printf("signatures %d\n", signatures);
            return failures > 99 ? 99 : failures;
        }
    }
    fprintf(stderr, "unknown scenario %s\n", argv[2]);
    return 100;
}
