/*
 * The PKCS#11 entry points that stay in C, and the rule every forwarded call follows.
 *
 * #included into the cffi-generated translation unit after embed.c. The only state is the pid that
 * called C_Initialize: a forked child sees a different pid, so it is "not initialised" until it
 * calls C_Initialize itself (PKCS#11 2.40, section 6.7.1), which is what nginx workers and
 * `pkcs11-tool --test-fork` do. Nothing here starts Python before C_Initialize, so probes such as
 * `p11-kit list-modules` stay cheap.
 */
#include <unistd.h>

static pid_t shim_initialized_pid; /* 0: not initialised in any process */

static int shim_initialized(void)
{
    return __atomic_load_n(&shim_initialized_pid, __ATOMIC_ACQUIRE) == getpid();
}

static CK_RV shim_not_supported(void)
{
    return shim_initialized() ? CKR_FUNCTION_NOT_SUPPORTED : CKR_CRYPTOKI_NOT_INITIALIZED;
}

static CK_RV shim_not_parallel(void)
{
    return shim_initialized() ? CKR_FUNCTION_NOT_PARALLEL : CKR_CRYPTOKI_NOT_INITIALIZED;
}

/* Every forwarded call: refuse before C_Initialize, then call Python with SIGPIPE blocked. */
#define SHIM_FORWARD(call)                                                                         \
    do {                                                                                           \
        if (!shim_initialized())                                                                   \
            return CKR_CRYPTOKI_NOT_INITIALIZED;                                                   \
        embed_guard guard;                                                                         \
        embed_enter(&guard);                                                                       \
        CK_RV rv = call;                                                                           \
        embed_leave(&guard);                                                                       \
        return rv;                                                                                 \
    } while (0)

CK_RV C_Initialize(void *init_args)
{
    if (shim_initialized())
        return CKR_CRYPTOKI_ALREADY_INITIALIZED;
    if (!embed_start())
        return CKR_GENERAL_ERROR;
    embed_guard guard;
    embed_enter(&guard);
    CK_RV rv = py_C_Initialize(init_args); /* Python keeps its own per-pid state and lock */
    embed_leave(&guard);
    /* ALREADY_INITIALIZED: another thread's C_Initialize won the race and has finished in Python
     * (it held the lock), but may not have set the flag yet; the library is initialised either way. */
    if (rv == CKR_OK || rv == CKR_CRYPTOKI_ALREADY_INITIALIZED)
        __atomic_store_n(&shim_initialized_pid, getpid(), __ATOMIC_RELEASE);
    return rv;
}

CK_RV C_Finalize(void *reserved)
{
    if (!shim_initialized())
        return CKR_CRYPTOKI_NOT_INITIALIZED;
    embed_guard guard;
    embed_enter(&guard);
    CK_RV rv = py_C_Finalize(reserved); /* Py_Finalize is never called: the module cannot restart it */
    embed_leave(&guard);
    if (rv == CKR_OK)
        __atomic_store_n(&shim_initialized_pid, 0, __ATOMIC_RELEASE);
    return rv;
}

static CK_FUNCTION_LIST shim_function_list;

CK_RV C_GetFunctionList(CK_FUNCTION_LIST **list)
{
    if (!list)
        return CKR_ARGUMENTS_BAD;
    *list = &shim_function_list;
    return CKR_OK;
}

/* PKCS#11 3.0 discovery (section 5.2 of the 3.0 base spec), offering the 2.40 function list. The
 * 2.40 header has no CK_INTERFACE, so its three-member layout is declared here. */
typedef struct {
    CK_UTF8CHAR *pInterfaceName;
    void *pFunctionList;
    CK_FLAGS flags;
} shim_interface;

static shim_interface shim_interfaces[] = {{(CK_UTF8CHAR *)"PKCS 11", &shim_function_list, 0}};

CK_RV C_GetInterfaceList(shim_interface *list, CK_ULONG *count);
CK_RV C_GetInterfaceList(shim_interface *list, CK_ULONG *count)
{
    if (!count)
        return CKR_ARGUMENTS_BAD;
    if (list) {
        if (*count < 1) {
            *count = 1;
            return CKR_BUFFER_TOO_SMALL;
        }
        list[0] = shim_interfaces[0];
    }
    *count = 1;
    return CKR_OK;
}

CK_RV C_GetInterface(CK_UTF8CHAR *name, CK_VERSION *version, shim_interface **interface, CK_FLAGS flags);
CK_RV C_GetInterface(CK_UTF8CHAR *name, CK_VERSION *version, shim_interface **interface, CK_FLAGS flags)
{
    if (!interface)
        return CKR_ARGUMENTS_BAD;
    if ((name && strcmp((const char *)name, "PKCS 11") != 0) ||
        (version && (version->major != 2 || version->minor != 40)) || (flags & ~shim_interfaces[0].flags)) {
        *interface = NULL;
        return CKR_ARGUMENTS_BAD;
    }
    *interface = &shim_interfaces[0];
    return CKR_OK;
}
