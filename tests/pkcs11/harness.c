/*
 * A C host for what the standard tools never try: calls before C_Initialize, NULL and bad
 * arguments, wrong handles, operation state after errors, threads, fork, and an HSM fault.
 *
 *   harness MODULE SCENARIO RSA_LABEL EC_LABEL
 *
 * Prints one line per check ("ok NAME" or "FAIL NAME: ...") and lines "sig MECH HEX" for the test
 * to verify with `cryptography`; the exit status is the number of failed checks.
 */
#include <dlfcn.h>
#include <p11-kit/pkcs11.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static CK_FUNCTION_LIST *p11;
static const char *rsa_label, *ec_label;
static int failures;

static void check(const char *name, CK_RV expected, CK_RV got)
{
    if (got == expected) {
        printf("ok %s\n", name);
    } else {
        printf("FAIL %s: expected 0x%lx got 0x%lx\n", name, expected, got);
        failures++;
    }
}

static void truth(const char *name, int condition)
{
    check(name, 1, (CK_RV)(condition != 0));
}

static void print_hex(const char *what, const char *mech, const unsigned char *data, CK_ULONG len)
{
    printf("%s %s ", what, mech);
    for (CK_ULONG i = 0; i < len; i++)
        printf("%02x", data[i]);
    printf("\n");
}

static CK_SESSION_HANDLE open_session(CK_FLAGS extra)
{
    CK_SESSION_HANDLE session = CK_INVALID_HANDLE;
    check("C_OpenSession", CKR_OK, p11->C_OpenSession(0, CKF_SERIAL_SESSION | extra, NULL, NULL, &session));
    return session;
}

static CK_OBJECT_HANDLE find(CK_SESSION_HANDLE session, const char *label, CK_OBJECT_CLASS cls)
{
    CK_ATTRIBUTE template[] = {{CKA_CLASS, &cls, sizeof cls}, {CKA_LABEL, (void *)label, strlen(label)}};
    CK_OBJECT_HANDLE found[2] = {CK_INVALID_HANDLE, CK_INVALID_HANDLE};
    CK_ULONG count = 0;
    check("C_FindObjectsInit", CKR_OK, p11->C_FindObjectsInit(session, template, 2));
    check("C_FindObjects", CKR_OK, p11->C_FindObjects(session, found, 2, &count));
    check("C_FindObjectsFinal", CKR_OK, p11->C_FindObjectsFinal(session));
    truth("exactly one object with the label", count == 1);
    return found[0];
}

/* A SHA-256 DigestInfo (of "abc"): CKM_RSA_PKCS input. */
static unsigned char digest_info[] = {
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20,
    0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40, 0xde, 0x5d, 0xae, 0x22, 0x23,
    0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad};
#define DIGEST (digest_info + 19)

static CK_RV sign_once(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE key, CK_MECHANISM_TYPE type, unsigned char *data,
                       CK_ULONG len, unsigned char *out, CK_ULONG *out_len)
{
    CK_MECHANISM mech = {type, NULL, 0};
    CK_RV rv = p11->C_SignInit(session, &mech, key);
    return rv != CKR_OK ? rv : p11->C_Sign(session, data, len, out, out_len);
}

static void initialize(void)
{
    CK_C_INITIALIZE_ARGS args = {0};
    args.flags = CKF_OS_LOCKING_OK;
    check("C_Initialize", CKR_OK, p11->C_Initialize(&args));
}

/* Every entry of the function list before C_Initialize. All parameters of PKCS#11 calls are
 * pointers or CK_ULONGs, so on this ABI each entry can be called with eight zero words. */
typedef CK_RV (*any_call)(CK_ULONG, CK_ULONG, CK_ULONG, CK_ULONG, CK_ULONG, CK_ULONG, CK_ULONG, CK_ULONG);

static void scenario_uninitialized(void)
{
    void (**entries)(void) = (void (**)(void))&p11->C_Initialize;
    size_t count = (sizeof *p11 - offsetof(CK_FUNCTION_LIST, C_Initialize)) / sizeof entries[0];
    int refused = 0;
    truth("the 2.40 list has 68 entries", count == 68);
    for (size_t i = 1; i < count; i++) {
        if ((void *)entries[i] == (void *)p11->C_GetFunctionList)
            continue;
        any_call call = (any_call)(void (*)(void))entries[i];
        refused += call(0, 0, 0, 0, 0, 0, 0, 0) == CKR_CRYPTOKI_NOT_INITIALIZED;
    }
    truth("every entry refuses before C_Initialize", refused == 66);
    check("C_Finalize before C_Initialize", CKR_CRYPTOKI_NOT_INITIALIZED, p11->C_Finalize(NULL));
}

static void scenario_init(void)
{
    CK_C_INITIALIZE_ARGS reserved = {0}, partial = {0};
    reserved.pReserved = &reserved;
    partial.CreateMutex = (CK_CREATEMUTEX)1;
    check("pReserved set", CKR_ARGUMENTS_BAD, p11->C_Initialize(&reserved));
    check("some mutex callbacks", CKR_ARGUMENTS_BAD, p11->C_Initialize(&partial));
    check("C_Initialize(NULL)", CKR_OK, p11->C_Initialize(NULL));
    check("C_Initialize twice", CKR_CRYPTOKI_ALREADY_INITIALIZED, p11->C_Initialize(NULL));
    check("C_Finalize(non-NULL)", CKR_ARGUMENTS_BAD, p11->C_Finalize(&partial));
    check("C_Encrypt is not supported", CKR_FUNCTION_NOT_SUPPORTED, p11->C_Encrypt(1, NULL, 0, NULL, NULL));
    check("C_DigestInit is not supported", CKR_FUNCTION_NOT_SUPPORTED, p11->C_DigestInit(1, NULL));
    check("C_Finalize", CKR_OK, p11->C_Finalize(NULL));
    check("C_Finalize twice", CKR_CRYPTOKI_NOT_INITIALIZED, p11->C_Finalize(NULL));
    initialize();
    CK_SESSION_HANDLE session = open_session(0);
    find(session, rsa_label, CKO_PRIVATE_KEY);
    check("C_Finalize with a session open", CKR_OK, p11->C_Finalize(NULL));
    check("the session died with C_Finalize", CKR_CRYPTOKI_NOT_INITIALIZED, p11->C_CloseSession(session));
}

static void scenario_bad_args(void)
{
    initialize();
    CK_SLOT_ID slots[1];
    CK_ULONG count = 0;
    CK_SLOT_INFO slot_info;
    CK_TOKEN_INFO token_info;
    check("C_GetInfo(NULL)", CKR_ARGUMENTS_BAD, p11->C_GetInfo(NULL));
    check("C_GetSlotList(NULL count)", CKR_ARGUMENTS_BAD, p11->C_GetSlotList(CK_FALSE, NULL, NULL));
    check("C_GetSlotList short", CKR_BUFFER_TOO_SMALL, p11->C_GetSlotList(CK_FALSE, slots, &count));
    truth("short list gives the count", count == 1);
    check("C_GetSlotInfo(bad slot)", CKR_SLOT_ID_INVALID, p11->C_GetSlotInfo(99, &slot_info));
    check("C_GetTokenInfo(bad slot)", CKR_SLOT_ID_INVALID, p11->C_GetTokenInfo(99, &token_info));
    check("C_GetTokenInfo(NULL)", CKR_ARGUMENTS_BAD, p11->C_GetTokenInfo(0, NULL));
    check("C_GetMechanismInfo(unknown)", CKR_MECHANISM_INVALID,
          p11->C_GetMechanismInfo(0, CKM_SHA1_RSA_PKCS, &(CK_MECHANISM_INFO){0}));
    CK_SESSION_HANDLE session;
    check("C_OpenSession without SERIAL", CKR_SESSION_PARALLEL_NOT_SUPPORTED, p11->C_OpenSession(0, 0, NULL, NULL, &session));
    check("C_OpenSession(NULL handle)", CKR_ARGUMENTS_BAD, p11->C_OpenSession(0, CKF_SERIAL_SESSION, NULL, NULL, NULL));
    check("C_CloseSession(bad)", CKR_SESSION_HANDLE_INVALID, p11->C_CloseSession(987654));
    check("C_GetSessionInfo(bad)", CKR_SESSION_HANDLE_INVALID, p11->C_GetSessionInfo(987654, &(CK_SESSION_INFO){0}));
    session = open_session(0);
    CK_ULONG found = 0;
    CK_OBJECT_HANDLE handles[4];
    check("C_FindObjects before Init", CKR_OPERATION_NOT_INITIALIZED, p11->C_FindObjects(session, handles, 4, &found));
    check("C_FindObjectsInit(NULL, 1)", CKR_ARGUMENTS_BAD, p11->C_FindObjectsInit(session, NULL, 1));
    check("C_FindObjectsInit(all)", CKR_OK, p11->C_FindObjectsInit(session, NULL, 0));
    check("C_FindObjectsInit twice", CKR_OPERATION_ACTIVE, p11->C_FindObjectsInit(session, NULL, 0));
    check("C_FindObjects(NULL)", CKR_ARGUMENTS_BAD, p11->C_FindObjects(session, NULL, 4, &found));
    check("C_FindObjectsFinal", CKR_OK, p11->C_FindObjectsFinal(session));
    CK_OBJECT_HANDLE key = find(session, rsa_label, CKO_PRIVATE_KEY);

    unsigned char small[1], modulus[512];
    CK_ATTRIBUTE sensitive = {CKA_PRIVATE_EXPONENT, modulus, sizeof modulus};
    check("CKA_PRIVATE_EXPONENT", CKR_ATTRIBUTE_SENSITIVE, p11->C_GetAttributeValue(session, key, &sensitive, 1));
    truth("sensitive length is unavailable", sensitive.ulValueLen == CK_UNAVAILABLE_INFORMATION);
    CK_ATTRIBUTE short_buffer = {CKA_MODULUS, small, sizeof small};
    check("CKA_MODULUS in 1 byte", CKR_BUFFER_TOO_SMALL, p11->C_GetAttributeValue(session, key, &short_buffer, 1));
    truth("short buffer length is unavailable", short_buffer.ulValueLen == CK_UNAVAILABLE_INFORMATION);
    CK_ATTRIBUTE size_query = {CKA_MODULUS, NULL, 0};
    check("CKA_MODULUS size", CKR_OK, p11->C_GetAttributeValue(session, key, &size_query, 1));
    truth("modulus is 256 bytes", size_query.ulValueLen == 256);
    CK_ATTRIBUTE unknown = {0x7ffffff0UL, modulus, sizeof modulus};
    check("unknown attribute", CKR_ATTRIBUTE_TYPE_INVALID, p11->C_GetAttributeValue(session, key, &unknown, 1));
    check("C_GetAttributeValue(bad object)", CKR_OBJECT_HANDLE_INVALID,
          p11->C_GetAttributeValue(session, 99999, &size_query, 1));

    CK_MECHANISM unknown_mech = {0x80001234UL, NULL, 0}, ecdsa = {CKM_ECDSA, NULL, 0}, pss = {CKM_RSA_PKCS_PSS, NULL, 0};
    check("C_SignInit(NULL)", CKR_ARGUMENTS_BAD, p11->C_SignInit(session, NULL, key));
    check("C_SignInit(unknown mechanism)", CKR_MECHANISM_INVALID, p11->C_SignInit(session, &unknown_mech, key));
    check("C_SignInit(bad key)", CKR_KEY_HANDLE_INVALID, p11->C_SignInit(session, &ecdsa, 99999));
    check("C_SignInit(ECDSA, RSA key)", CKR_KEY_TYPE_INCONSISTENT, p11->C_SignInit(session, &ecdsa, key));
    check("C_SignInit(PSS, no params)", CKR_MECHANISM_PARAM_INVALID, p11->C_SignInit(session, &pss, key));
    CK_RSA_PKCS_PSS_PARAMS wrong_salt = {CKM_SHA256, CKG_MGF1_SHA256, 20}, wrong_mgf = {CKM_SHA256, CKG_MGF1_SHA384, 32};
    pss.pParameter = &wrong_salt;
    pss.ulParameterLen = sizeof wrong_salt;
    check("C_SignInit(PSS, salt 20)", CKR_MECHANISM_PARAM_INVALID, p11->C_SignInit(session, &pss, key));
    pss.pParameter = &wrong_mgf;
    check("C_SignInit(PSS, MGF1-SHA384)", CKR_MECHANISM_PARAM_INVALID, p11->C_SignInit(session, &pss, key));
    check("C_Sign without SignInit", CKR_OPERATION_NOT_INITIALIZED, p11->C_Sign(session, DIGEST, 32, NULL, &found));

    check("C_Login(SO)", CKR_USER_TYPE_INVALID, p11->C_Login(session, CKU_SO, NULL, 0));
    check("C_Login(NULL pin, length 4)", CKR_ARGUMENTS_BAD, p11->C_Login(session, CKU_USER, NULL, 4));
    check("C_Login(wrong secret)", CKR_PIN_INCORRECT,
          p11->C_Login(session, CKU_USER, (unsigned char *)"00000000-0000-0000-0000-000000000000:nope", 41));
    check("C_Logout when not logged in", CKR_USER_NOT_LOGGED_IN, p11->C_Logout(session));

    CK_ULONG bits = 1024;
    CK_ATTRIBUTE pub[] = {{CKA_MODULUS_BITS, &bits, sizeof bits}};
    CK_MECHANISM keygen = {CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0};
    CK_OBJECT_HANDLE a, b;
    check("C_GenerateKeyPair in a read-only session", CKR_SESSION_READ_ONLY,
          p11->C_GenerateKeyPair(session, &keygen, pub, 1, NULL, 0, &a, &b));
    CK_SESSION_HANDLE rw = open_session(CKF_RW_SESSION);
    check("C_GenerateKeyPair(1024 bits)", CKR_KEY_SIZE_RANGE, p11->C_GenerateKeyPair(rw, &keygen, pub, 1, NULL, 0, &a, &b));
    check("C_GenerateKeyPair(NULL handles)", CKR_ARGUMENTS_BAD, p11->C_GenerateKeyPair(rw, &keygen, pub, 1, NULL, 0, NULL, &b));
    CK_BBOOL yes = CK_TRUE;
    CK_ATTRIBUTE export_me[] = {{CKA_EXTRACTABLE, &yes, sizeof yes}};
    bits = 2048;
    check("C_GenerateKeyPair(extractable)", CKR_ATTRIBUTE_VALUE_INVALID,
          p11->C_GenerateKeyPair(rw, &keygen, pub, 1, export_me, 1, &a, &b));
    CK_ATTRIBUTE relabel = {CKA_MODULUS, modulus, 4};
    check("C_SetAttributeValue(CKA_MODULUS)", CKR_ATTRIBUTE_READ_ONLY, p11->C_SetAttributeValue(rw, key, &relabel, 1));
    unsigned char random[300];
    check("C_GenerateRandom(NULL, 16)", CKR_ARGUMENTS_BAD, p11->C_GenerateRandom(session, NULL, 16));
    check("C_GenerateRandom(300)", CKR_OK, p11->C_GenerateRandom(session, random, sizeof random));
    check("C_Finalize", CKR_OK, p11->C_Finalize(NULL));
}

static void scenario_sign_states(void)
{
    initialize();
    CK_SESSION_HANDLE session = open_session(0);
    CK_OBJECT_HANDLE rsa = find(session, rsa_label, CKO_PRIVATE_KEY), ec = find(session, ec_label, CKO_PRIVATE_KEY);
    CK_OBJECT_HANDLE rsa_pub = find(session, rsa_label, CKO_PUBLIC_KEY);
    CK_MECHANISM pkcs = {CKM_RSA_PKCS, NULL, 0}, ecdsa = {CKM_ECDSA, NULL, 0}, hashed = {CKM_SHA256_RSA_PKCS, NULL, 0};
    unsigned char sig[512], sig2[512];
    CK_ULONG len = 0, len2 = sizeof sig2;

    check("C_SignInit", CKR_OK, p11->C_SignInit(session, &pkcs, rsa));
    check("C_SignInit while active", CKR_OPERATION_ACTIVE, p11->C_SignInit(session, &pkcs, rsa));
    check("size query", CKR_OK, p11->C_Sign(session, digest_info, sizeof digest_info, NULL, &len));
    truth("size is the modulus length", len == 256);
    len = 10;
    check("short buffer", CKR_BUFFER_TOO_SMALL, p11->C_Sign(session, digest_info, sizeof digest_info, sig, &len));
    truth("short buffer gives the length", len == 256);
    check("sign after both (still active)", CKR_OK, p11->C_Sign(session, digest_info, sizeof digest_info, sig, &len));
    print_hex("sig", "RSA_PKCS", sig, len);
    check("the operation ended", CKR_OPERATION_NOT_INITIALIZED, p11->C_Sign(session, digest_info, 51, sig, &len));

    check("C_SignInit(ECDSA)", CKR_OK, p11->C_SignInit(session, &ecdsa, ec));
    len = sizeof sig;
    check("ECDSA over 10 bytes", CKR_DATA_LEN_RANGE, p11->C_Sign(session, DIGEST, 10, sig, &len));
    check("the failed sign ended the operation", CKR_OPERATION_NOT_INITIALIZED, p11->C_Sign(session, DIGEST, 32, sig, &len));
    check("a new C_SignInit works", CKR_OK, p11->C_SignInit(session, &ecdsa, ec));
    check("C_Sign(NULL length)", CKR_ARGUMENTS_BAD, p11->C_Sign(session, DIGEST, 32, sig, NULL));
    check("and after that error too", CKR_OK, p11->C_SignInit(session, &ecdsa, ec));
    len = sizeof sig;
    check("ECDSA", CKR_OK, p11->C_Sign(session, DIGEST, 32, sig, &len));
    truth("raw r||s of P-256", len == 64);
    print_hex("sig", "ECDSA", sig, len);

    check("C_SignUpdate on a raw mechanism", CKR_OK, p11->C_SignInit(session, &pkcs, rsa));
    check("is refused", CKR_FUNCTION_NOT_SUPPORTED, p11->C_SignUpdate(session, digest_info, 5));
    check("and ends the operation", CKR_OK, p11->C_SignInit(session, &hashed, rsa));
    check("C_SignUpdate 1", CKR_OK, p11->C_SignUpdate(session, (unsigned char *)"a", 1));
    check("C_SignUpdate 2", CKR_OK, p11->C_SignUpdate(session, (unsigned char *)"bc", 2));
    len = sizeof sig;
    check("C_SignFinal", CKR_OK, p11->C_SignFinal(session, sig, &len));
    check("one-shot", CKR_OK, sign_once(session, rsa, CKM_SHA256_RSA_PKCS, (unsigned char *)"abc", 3, sig2, &len2));
    truth("multi-part equals one-shot (PKCS#1 v1.5 is deterministic)", len == len2 && !memcmp(sig, sig2, len));

    check("C_VerifyInit", CKR_OK, p11->C_VerifyInit(session, &hashed, rsa_pub));
    check("C_Verify", CKR_OK, p11->C_Verify(session, (unsigned char *)"abc", 3, sig, len));
    sig[10] ^= 1;
    check("C_VerifyInit", CKR_OK, p11->C_VerifyInit(session, &hashed, rsa_pub));
    check("a changed signature", CKR_SIGNATURE_INVALID, p11->C_Verify(session, (unsigned char *)"abc", 3, sig, len));
    check("C_VerifyInit", CKR_OK, p11->C_VerifyInit(session, &hashed, rsa_pub));
    check("a short signature", CKR_SIGNATURE_LEN_RANGE, p11->C_Verify(session, (unsigned char *)"abc", 3, sig, 12));
    check("C_Finalize", CKR_OK, p11->C_Finalize(NULL));
}

struct worker {
    CK_SESSION_HANDLE session;
    CK_OBJECT_HANDLE key;
    int signed_ok, unexpected;
};

enum { SIGNS_PER_THREAD = 8 };

static void *sign_loop(void *arg)
{
    struct worker *w = arg;
    for (int attempts = 0; w->signed_ok < SIGNS_PER_THREAD && attempts < 400; attempts++) {
        unsigned char sig[132];
        CK_ULONG len = sizeof sig;
        CK_RV rv = sign_once(w->session, w->key, CKM_ECDSA, DIGEST, 32, sig, &len);
        if (rv == CKR_OK)
            w->signed_ok++;
        else if (rv == CKR_OPERATION_ACTIVE || rv == CKR_OPERATION_NOT_INITIALIZED)
            sched_yield(); /* another thread of the same session is between its SignInit and Sign */
        else
            w->unexpected++;
    }
    return NULL;
}

static void run_threads(const char *name, int count, int shared)
{
    pthread_t threads[8];
    struct worker workers[8] = {{0}};
    CK_SESSION_HANDLE one = open_session(0);
    CK_OBJECT_HANDLE key = find(one, ec_label, CKO_PRIVATE_KEY);
    for (int i = 0; i < count; i++) {
        workers[i].session = shared ? one : open_session(0);
        workers[i].key = key;
        pthread_create(&threads[i], NULL, sign_loop, &workers[i]);
    }
    int ok = 0, unexpected = 0;
    for (int i = 0; i < count; i++) {
        pthread_join(threads[i], NULL);
        ok += workers[i].signed_ok;
        unexpected += workers[i].unexpected;
    }
    printf("%s: %d signatures, %d unexpected return values\n", name, ok, unexpected);
    truth(name, ok == count * SIGNS_PER_THREAD && unexpected == 0);
}

static void scenario_threads(void)
{
    initialize();
    run_threads("8 threads on 8 sessions", 8, 0);
    run_threads("4 threads on one session", 4, 1);
    check("C_Finalize", CKR_OK, p11->C_Finalize(NULL));
}

static void scenario_fork(void)
{
    initialize();
    CK_SESSION_HANDLE session = open_session(0);
    CK_OBJECT_HANDLE key = find(session, ec_label, CKO_PRIVATE_KEY);
    unsigned char sig[132];
    CK_ULONG len = sizeof sig;
    check("parent signs before fork", CKR_OK, sign_once(session, key, CKM_ECDSA, DIGEST, 32, sig, &len));
    fflush(stdout);
    pid_t child = fork();
    if (child == 0) {
        failures = 0;
        check("child: parent's session before C_Initialize", CKR_CRYPTOKI_NOT_INITIALIZED,
              sign_once(session, key, CKM_ECDSA, DIGEST, 32, sig, &len));
        check("child: C_Initialize", CKR_OK, p11->C_Initialize(NULL));
        check("child: parent's session is gone", CKR_SESSION_HANDLE_INVALID, p11->C_CloseSession(session));
        CK_SESSION_HANDLE mine = open_session(0);
        CK_OBJECT_HANDLE again = find(mine, ec_label, CKO_PRIVATE_KEY);
        truth("child: the same handle", again == key);
        len = sizeof sig;
        check("child: signs", CKR_OK, sign_once(mine, again, CKM_ECDSA, DIGEST, 32, sig, &len));
        print_hex("sig", "ECDSA", sig, len);
        fflush(stdout);
        _exit(failures);
    }
    int status = 0;
    waitpid(child, &status, 0);
    truth("child exited cleanly with no failed check", WIFEXITED(status) && WEXITSTATUS(status) == 0);
    len = sizeof sig;
    check("parent signs after fork", CKR_OK, sign_once(session, key, CKM_ECDSA, DIGEST, 32, sig, &len));
    check("C_Finalize", CKR_OK, p11->C_Finalize(NULL));
}

static void scenario_hsm_fault(void)
{
    initialize();
    CK_SESSION_HANDLE session = open_session(0);
    CK_OBJECT_HANDLE key = find(session, ec_label, CKO_PRIVATE_KEY);
    unsigned char sig[132];
    CK_ULONG len = sizeof sig;
    /* The test injected one 503 on sign with retries off: this sign meets it. */
    check("sign during an HSM fault", CKR_DEVICE_ERROR, sign_once(session, key, CKM_ECDSA, DIGEST, 32, sig, &len));
    check("the fault ended the operation", CKR_OPERATION_NOT_INITIALIZED, p11->C_Sign(session, DIGEST, 32, sig, &len));
    len = sizeof sig;
    check("the next sign works", CKR_OK, sign_once(session, key, CKM_ECDSA, DIGEST, 32, sig, &len));
    check("C_Finalize", CKR_OK, p11->C_Finalize(NULL));
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: %s MODULE SCENARIO RSA_LABEL EC_LABEL\n", argv[0]);
        return 2;
    }
    rsa_label = argv[3];
    ec_label = argv[4];
    void *module = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!module) {
        fprintf(stderr, "dlopen: %s\n", dlerror());
        return 2;
    }
    CK_C_GetFunctionList get_list = (CK_C_GetFunctionList)dlsym(module, "C_GetFunctionList");
    if (!get_list || get_list(&p11) != CKR_OK)
        return 2;
    static const struct {
        const char *name;
        void (*run)(void);
    } scenarios[] = {{"uninitialized", scenario_uninitialized}, {"init", scenario_init},
                     {"bad_args", scenario_bad_args},           {"sign_states", scenario_sign_states},
                     {"threads", scenario_threads},             {"fork", scenario_fork},
                     {"hsm_fault", scenario_hsm_fault}};
    for (size_t i = 0; i < sizeof scenarios / sizeof scenarios[0]; i++) {
        if (!strcmp(argv[2], scenarios[i].name)) {
            scenarios[i].run();
            return failures;
        }
    }
    fprintf(stderr, "unknown scenario %s\n", argv[2]);
    return 2;
}
