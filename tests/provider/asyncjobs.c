/*
 * Drives the provider's signatures inside OpenSSL ASYNC jobs directly, as libssl does under
 * SSL_MODE_ASYNC but with every step in the test's hands: how many jobs are paused at once, a
 * wait context freed while its job is paused (SSL_free of a connection whose client left), a
 * fork with jobs paused, errors, and what is refused inside a job.
 *
 *   asyncjobs paused|abandon|fork|errors|inside KEY.pem N     (KEY.pem: a PEM-wrapped pkcs11: URI)
 *
 * Prints one line of key=value results; test_async_jobs.py asserts on them.
 */
#include <errno.h>
#include <fcntl.h>
#include <openssl/async.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/store.h>
#include <openssl/x509.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <dirent.h>

#define MAX_JOBS 64
static const unsigned char message[] = "a TLS handshake transcript stands in here";

typedef struct {
    EVP_PKEY *key;
    unsigned char sig[1024];
    size_t len;
    int ok;
    char error[512];
} sign_task;

typedef struct {
    ASYNC_JOB *job;
    ASYNC_WAIT_CTX *waitctx;
    sign_task task;
    int finished;
} slot;

static EVP_PKEY *key, *public_copy;

static void last_error(char *out, size_t size)
{
    const char *data = NULL;
    int flags = 0;
    unsigned long code, last = 0;
    out[0] = '\0';
    while ((code = ERR_get_error_all(NULL, NULL, NULL, &data, &flags)) != 0) {
        last = code;
        if (data && (flags & ERR_TXT_STRING))
            snprintf(out, size, "%s", data);
    }
    if (!out[0] && last)
        ERR_error_string_n(last, out, size);
}

/* The signature as libssl makes it: DigestSignInit, PSS for RSA, one-shot DigestSign. */
static int sign(sign_task *t)
{
    EVP_PKEY_CTX *pctx = NULL;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    int rsa = EVP_PKEY_is_a(t->key, "RSA");
    t->len = sizeof(t->sig);
    t->ok = md && EVP_DigestSignInit_ex(md, &pctx, "SHA2-256", NULL, NULL, t->key, NULL) > 0 &&
            (!rsa || (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) > 0 &&
                      EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) > 0)) &&
            EVP_DigestSign(md, t->sig, &t->len, message, sizeof(message)) > 0;
    if (!t->ok)
        last_error(t->error, sizeof(t->error));
    EVP_MD_CTX_free(md);
    return t->ok;
}

static int sign_job(void *arg)
{
    return sign(*(sign_task **)arg);
}

/* Checked by the default provider, with the public half only. */
static int verified(const sign_task *t)
{
    EVP_PKEY_CTX *pctx = NULL;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    int rsa = EVP_PKEY_is_a(public_copy, "RSA");
    int ok = md && EVP_DigestVerifyInit_ex(md, &pctx, "SHA2-256", NULL, "provider=default", public_copy, NULL) > 0 &&
             (!rsa || (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) > 0 &&
                       EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) > 0)) &&
             EVP_DigestVerify(md, t->sig, t->len, message, sizeof(message)) == 1;
    EVP_MD_CTX_free(md);
    return ok;
}

static int count_dir(const char *path, const char *match)
{
    DIR *dir = opendir(path);
    struct dirent *entry;
    char link[512], target[256];
    int count = 0;
    while (dir && (entry = readdir(dir))) {
        if (entry->d_name[0] == '.')
            continue;
        if (!match) {
            count++;
            continue;
        }
        snprintf(link, sizeof(link), "%s/%s", path, entry->d_name);
        ssize_t n = readlink(link, target, sizeof(target) - 1);
        if (n > 0) {
            target[n] = '\0';
            count += strcmp(target, match) == 0;
        }
    }
    if (dir)
        closedir(dir);
    return count;
}

static int eventfds(void)
{
    return count_dir("/proc/self/fd", "anon_inode:[eventfd]");
}

/* The eventfds left once the signing threads have let go of theirs (a thread may close the last one
 * just after the job it woke has finished). */
static int eventfds_settled(void)
{
    for (int waited = 0; eventfds() && waited < 100; waited++)
        usleep(50000);
    return eventfds();
}

static int threads(void)
{
    return count_dir("/proc/self/task", NULL);
}

/* Start `n` jobs, each on its own wait context; returns how many paused. */
static int start(slot *slots, int n)
{
    int paused = 0, ret;
    for (int i = 0; i < n; i++) {
        sign_task *task = &slots[i].task;
        slots[i].task.key = key;
        slots[i].waitctx = ASYNC_WAIT_CTX_new();
        int status = ASYNC_start_job(&slots[i].job, slots[i].waitctx, &ret, sign_job, &task, sizeof(task));
        paused += status == ASYNC_PAUSE;
        slots[i].finished = status == ASYNC_FINISH;
    }
    return paused;
}

/* Poll every paused job's fds and resume the ready ones until all finished; returns how many verified. */
static int finish(slot *slots, int n)
{
    int left = n, good = 0, ret;
    for (int i = 0; i < n; i++)
        if (slots[i].finished)
            left--, good += slots[i].task.ok && verified(&slots[i].task);
    while (left > 0) {
        struct pollfd fds[MAX_JOBS];
        int owner[MAX_JOBS], nfds = 0;
        for (int i = 0; i < n; i++) {
            OSSL_ASYNC_FD fd;
            size_t count = 1;
            if (!slots[i].finished && ASYNC_WAIT_CTX_get_all_fds(slots[i].waitctx, &fd, &count) && count == 1) {
                fds[nfds] = (struct pollfd){fd, POLLIN, 0};
                owner[nfds++] = i;
            }
        }
        if (nfds != left || poll(fds, (nfds_t)nfds, 30000) <= 0)
            return -1; /* a paused job without its fd, or nothing fired in 30 s */
        for (int k = 0; k < nfds; k++) {
            slot *s = &slots[owner[k]];
            sign_task *task = &s->task;
            if (!(fds[k].revents & POLLIN))
                continue;
            int status = ASYNC_start_job(&s->job, s->waitctx, &ret, sign_job, &task, sizeof(task));
            if (status == ASYNC_FINISH) {
                s->finished = 1, left--;
                good += s->task.ok && verified(&s->task);
            } else if (status != ASYNC_PAUSE) {
                return -1;
            }
        }
    }
    for (int i = 0; i < n; i++)
        ASYNC_WAIT_CTX_free(slots[i].waitctx);
    return good;
}

static int run_round(int n, int *paused)
{
    slot *slots = calloc((size_t)n, sizeof(*slots));
    *paused = start(slots, n);
    int good = finish(slots, n);
    free(slots);
    return good;
}

/* Inside a job: what libssl asks of a key besides the signature must not need Python. */
static int inside_job(void *arg)
{
    char *out = *(char **)arg, error[512];
    OSSL_STORE_CTX *store = OSSL_STORE_open("pkcs11:", NULL, NULL, NULL, NULL);
    last_error(error, sizeof(error));
    EVP_PKEY_CTX *pctx = EVP_PKEY_CTX_new_from_pkey(NULL, key, NULL);
    int init = pctx && EVP_PKEY_sign_init(pctx) > 0;
    EVP_PKEY_CTX_free(pctx);
    snprintf(out, 1024, "store_opened=%d store_error=\"%s\" bits=%d can_sign=%d eq=%d sign_init=%d", store != NULL,
             error, EVP_PKEY_get_bits(key), EVP_PKEY_can_sign(key), EVP_PKEY_eq(key, public_copy), init);
    if (store)
        OSSL_STORE_close(store);
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: asyncjobs paused|abandon|fork|errors|inside KEY.pem N\n");
        return 2;
    }
    const char *scenario = argv[1];
    int n = atoi(argv[3]), paused = 0;
    if (n < 1 || n > MAX_JOBS)
        return 2;
    FILE *pem = fopen(argv[2], "r"); /* as HAProxy reads its crt file: the decoder of the wrapped URI */
    key = pem ? PEM_read_PrivateKey(pem, NULL, NULL, NULL) : NULL;
    if (pem)
        fclose(pem);
    unsigned char der[4096], *p = der;
    const unsigned char *q = der;
    int der_len = key ? i2d_PUBKEY(key, &p) : -1;
    public_copy = der_len > 0 ? d2i_PUBKEY_ex(NULL, &q, der_len, NULL, "provider=default") : NULL;
    if (!public_copy) {
        fprintf(stderr, "asyncjobs: no private key in %s\n", argv[2]);
        return 1;
    }
    printf("threads_before=%d ", threads());
    if (!strcmp(scenario, "paused")) {
        int good = run_round(n, &paused);
        printf("paused=%d verified=%d threads=%d eventfds=%d\n", paused, good, threads(), eventfds_settled());
    } else if (!strcmp(scenario, "abandon")) {
        /* Free each wait context with its job paused, as SSL_free does when the client has left. */
        slot *slots = calloc((size_t)n, sizeof(*slots));
        paused = start(slots, n);
        for (int i = 0; i < n; i++)
            ASYNC_WAIT_CTX_free(slots[i].waitctx);
        int during = eventfds(), after = eventfds_settled(), pipes[2 * MAX_JOBS], intact = 0;
        for (int i = 0; i < n; i++) /* they take the numbers the eventfds had: a second close would hit them */
            if (pipe(pipes + 2 * i) != 0)
                return 1;
        usleep(500000);
        for (int i = 0; i < 2 * n; i++)
            intact += fcntl(pipes[i], F_GETFD) != -1;
        printf("paused=%d eventfds_during=%d eventfds_after=%d pipes_intact=%d\n", paused, during, after, intact);
    } else if (!strcmp(scenario, "fork")) {
        /* The pool runs (a first round); then a fork with `n` jobs paused. */
        int good = run_round(n, &paused);
        slot *slots = calloc((size_t)n, sizeof(*slots));
        int paused_at_fork = start(slots, n), status = 0;
        fflush(stdout);
        pid_t child = fork();
        if (child == 0) {
            /* An inherited paused job resumed here must fail at once, not wait for a thread that is not here. */
            sign_task *task = &slots[0].task;
            int ret, step = ASYNC_start_job(&slots[0].job, slots[0].waitctx, &ret, sign_job, &task, sizeof(task));
            int child_threads = threads();
            int child_good = run_round(n, &paused);
            printf("child: inherited_finished=%d inherited_ok=%d error=\"%s\" threads_at_fork=%d verified=%d "
                   "threads=%d\n", step == ASYNC_FINISH, slots[0].task.ok, slots[0].task.error, child_threads,
                   child_good, threads());
            fflush(stdout);
            _exit(0);
        }
        int parent_good = finish(slots, n);
        waitpid(child, &status, 0);
        printf("parent: first=%d paused_at_fork=%d verified=%d child_status=%d threads=%d\n", good, paused_at_fork,
               parent_good, status, threads());
    } else if (!strcmp(scenario, "errors")) {
        /* The same failure inside a job and outside: the same one-line error. */
        slot *slots = calloc(1, sizeof(*slots));
        start(slots, 1);
        int good = finish(slots, 1);
        sign_task direct = {.key = key};
        sign(&direct);
        printf("verified=%d async_error=\"%s\" sync_ok=%d sync_error=\"%s\" eventfds=%d\n", good,
               slots[0].task.error, direct.ok, direct.error, eventfds_settled());
    } else if (!strcmp(scenario, "inside")) {
        char out[1024], *arg = out;
        int ret;
        ASYNC_JOB *job = NULL;
        ASYNC_WAIT_CTX *waitctx = ASYNC_WAIT_CTX_new();
        int status = ASYNC_start_job(&job, waitctx, &ret, inside_job, &arg, sizeof(arg));
        printf("finished=%d %s threads=%d\n", status == ASYNC_FINISH, out, threads());
        ASYNC_WAIT_CTX_free(waitctx);
    } else {
        return 2;
    }
    return 0;
}
