/*
 * Boot or attach CPython for a cffi-embedded shim (shared by the PKCS#11 module and the provider).
 *
 * This file is #included into the cffi-generated translation unit, because cffi_start_python()
 * is static there. The including build defines:
 *   EMBED_NAME   the shim's name, for its one log line on failure
 *   EMBED_PYVER  the "X.Y" it was built for
 *   EMBED_HOME   sys.base_prefix of that Python
 *   EMBED_PATHS  the comma-separated C strings of its sys.path
 *
 * Why by hand: cffi's own start-up calls Py_InitializeEx(0), which searches the host's PATH for
 * python3, honours PYTHONPATH/PYTHONHOME and exits the host on a bad home. Here the interpreter is
 * isolated, its paths are fixed at build time, and a failure is reported, never fatal.
 *
 * State is a pthread_once and two ints: all survive fork with the right meaning (Python stays
 * booted in the child; the fork hooks below keep its runtime consistent).
 */
#include <Python.h>
#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static const char *const embed_paths[] = {EMBED_PATHS, NULL};
static pthread_once_t embed_once = PTHREAD_ONCE_INIT;
static int embed_ready;                 /* the Python side is bound and callable */
/* This thread is booting Python. Imports can come back into the host's crypto stack (the
 * cryptography wheel's own OpenSSL reads OPENSSL_CONF and may load a provider that loads this very
 * module): such a call must fail at once instead of waiting on the boot it is part of. */
static __thread int embed_booting;
static PyGILState_STATE embed_fork_gil; /* held across fork(), only by the forking thread */

static void embed_log(const char *what, const char *detail)
{
    fprintf(stderr, "%s: %s%s%s\n", EMBED_NAME, what, detail ? ": " : "", detail ? detail : "");
}

/* Hosts dlopen() modules RTLD_LOCAL; extension modules (_cffi_backend, cryptography) are not linked
 * against libpython and need its symbols global. Re-open the libpython we were linked with. */
__attribute__((constructor)) static void embed_promote_libpython(void)
{
    Dl_info info;
    if (dladdr((void *)&Py_IsInitialized, &info) && info.dli_fname)
        (void)dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_GLOBAL);
}

static void embed_prefork(void)
{
    embed_fork_gil = PyGILState_Ensure();
    PyOS_BeforeFork();
}

static void embed_postfork_parent(void)
{
    PyOS_AfterFork_Parent();
    PyGILState_Release(embed_fork_gil);
}

static void embed_postfork_child(void)
{
    PyOS_AfterFork_Child();
    PyGILState_Release(embed_fork_gil);
}

static PyStatus embed_config(PyConfig *config)
{
    PyStatus status;
    PyConfig_InitIsolatedConfig(config); /* no PYTHON* variables, no user site, no cwd on the path */
    config->install_signal_handlers = 0;
    config->site_import = 0;
    config->module_search_paths_set = 1;
    status = PyConfig_SetBytesString(config, &config->home, EMBED_HOME);
    for (const char *const *path = embed_paths; *path && !PyStatus_Exception(status); path++) {
        wchar_t *wide = Py_DecodeLocale(*path, NULL);
        if (!wide)
            return PyStatus_NoMemory();
        status = PyWideStringList_Append(&config->module_search_paths, wide);
        PyMem_RawFree(wide);
    }
    return status;
}

static void embed_boot(void)
{
    embed_booting = 1;
    if (Py_IsInitialized()) {
        /* The host is Python (python-pkcs11, PyKCS11, ctypes): use its interpreter if it is ours. */
        const char *running = Py_GetVersion();
        size_t n = strlen(EMBED_PYVER);
        if (strncmp(running, EMBED_PYVER, n) != 0 || running[n] != '.') {
            embed_log("built for Python " EMBED_PYVER " but the host process runs Python", running);
            return;
        }
    } else {
        PyPreConfig pre;
        PyConfig config;
        PyPreConfig_InitIsolatedConfig(&pre);
        PyStatus status = Py_PreInitialize(&pre);
        if (!PyStatus_Exception(status))
            status = embed_config(&config);
        if (!PyStatus_Exception(status))
            status = Py_InitializeFromConfig(&config);
        PyConfig_Clear(&config);
        if (PyStatus_Exception(status)) {
            embed_log("cannot start the embedded Python", status.err_msg);
            return;
        }
        PyEval_SaveThread(); /* cffi takes the GIL per call */
        /* Only an interpreter we booted needs our fork hooks: a Python host's os.fork() does this. */
        pthread_atfork(embed_prefork, embed_postfork_parent, embed_postfork_child);
    }
    if (cffi_start_python() != 0) {
        embed_log("the Python side failed to load (see the traceback above)", NULL);
        return;
    }
    embed_ready = 1;
    embed_booting = 0;
}

/* Boot once per process (the result is kept across fork); 1 when Python calls may be made. */
static int embed_start(void)
{
    if (embed_booting)
        return 0;
    pthread_once(&embed_once, embed_boot);
    embed_booting = 0; /* also after a boot that failed part-way */
    return embed_ready;
}

/* SIGPIPE is blocked around every call into Python, and a pending one drained: the interpreter does
 * not install handlers, so a write to a closed socket would otherwise kill the host. */
typedef struct {
    sigset_t old;
} embed_guard;

static void embed_enter(embed_guard *guard)
{
    sigset_t pipe_only;
    sigemptyset(&pipe_only);
    sigaddset(&pipe_only, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_only, &guard->old);
}

static void embed_leave(embed_guard *guard)
{
    if (!sigismember(&guard->old, SIGPIPE)) {
        sigset_t pipe_only;
        struct timespec zero = {0, 0};
        sigemptyset(&pipe_only);
        sigaddset(&pipe_only, SIGPIPE);
        while (sigtimedwait(&pipe_only, NULL, &zero) > 0) {
        }
        pthread_sigmask(SIG_SETMASK, &guard->old, NULL);
    }
}
