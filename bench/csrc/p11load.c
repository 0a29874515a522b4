/*
 * Sign load through a PKCS#11 module, as a C host does it: one session per thread, C_SignInit +
 * C_Sign on a SHA-256 digest with a private key found by label.
 *
 *   p11load MODULE LABEL rsa-pss|rsa-pkcs|ecdsa THREADS COUNT|tSECONDS [PIN]
 */
#include <dlfcn.h>
#include <p11-kit/pkcs11.h>
#include <string.h>

#include "loadgen.h"

static CK_FUNCTION_LIST *p11;
static CK_SLOT_ID slot;
static const char *label, *pin;
static CK_MECHANISM mechanism;
static CK_RSA_PKCS_PSS_PARAMS pss = {CKM_SHA256, CKG_MGF1_SHA256, 32};
static unsigned char input[19 + 32] = {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                                       0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20};
static CK_ULONG input_len = 32, input_offset = 19; /* the digest; rsa-pkcs signs DigestInfo || digest */

typedef struct {
    CK_SESSION_HANDLE session;
    CK_OBJECT_HANDLE key;
} worker;

static void *worker_setup(int index)
{
    worker *w = calloc(1, sizeof(*w));
    CK_OBJECT_CLASS klass = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE find[] = {{CKA_CLASS, &klass, sizeof(klass)}, {CKA_LABEL, (void *)label, strlen(label)}};
    CK_ULONG found = 0;
    (void)index;
    if (!w || p11->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &w->session) != CKR_OK)
        return NULL;
    if (pin && *pin) {
        CK_RV rv = p11->C_Login(w->session, CKU_USER, (CK_UTF8CHAR *)pin, strlen(pin));
        if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN)
            return NULL;
    }
    if (p11->C_FindObjectsInit(w->session, find, 2) != CKR_OK ||
        p11->C_FindObjects(w->session, &w->key, 1, &found) != CKR_OK || p11->C_FindObjectsFinal(w->session) != CKR_OK ||
        found != 1) {
        fprintf(stderr, "p11load: no private key labelled %s\n", label);
        return NULL;
    }
    return w;
}

static int sign_once(void *state)
{
    worker *w = state;
    unsigned char sig[1024];
    CK_ULONG len = sizeof(sig);
    return p11->C_SignInit(w->session, &mechanism, w->key) == CKR_OK &&
           p11->C_Sign(w->session, input + input_offset, input_len, sig, &len) == CKR_OK;
}

int main(int argc, char **argv)
{
    if (argc < 6) {
        fprintf(stderr, "usage: p11load MODULE LABEL rsa-pss|rsa-pkcs|ecdsa THREADS COUNT|tSECONDS [PIN]\n");
        return 2;
    }
    label = argv[2];
    pin = argc > 6 ? argv[6] : NULL;
    for (int i = 0; i < 32; i++)
        input[19 + i] = (unsigned char)(i * 7 + 1);
    if (!strcmp(argv[3], "rsa-pss"))
        mechanism = (CK_MECHANISM){CKM_RSA_PKCS_PSS, &pss, sizeof(pss)};
    else if (!strcmp(argv[3], "rsa-pkcs"))
        mechanism = (CK_MECHANISM){CKM_RSA_PKCS, NULL, 0}, input_len = 51, input_offset = 0;
    else
        mechanism = (CK_MECHANISM){CKM_ECDSA, NULL, 0};
    void *module = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    CK_C_GetFunctionList get = module ? (CK_C_GetFunctionList)dlsym(module, "C_GetFunctionList") : NULL;
    CK_C_INITIALIZE_ARGS args = {.flags = CKF_OS_LOCKING_OK};
    CK_ULONG count = 1;
    if (!get || get(&p11) != CKR_OK || p11->C_Initialize(&args) != CKR_OK ||
        p11->C_GetSlotList(CK_TRUE, &slot, &count) != CKR_OK || count < 1) {
        fprintf(stderr, "p11load: cannot load or initialise %s\n", argv[1]);
        return 1;
    }
    return run_load(atoi(argv[4]), argv[5]);
}
