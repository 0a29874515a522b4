/*
 * Signatures asked for inside an OpenSSL ASYNC job (SSL_MODE_ASYNC; HAProxy's ssl-mode-async):
 * the host's thread goes on serving its other connections while the HSM answers.
 *
 * libssl runs an async-mode handshake in a job, a fiber on a small stack (32 KiB in 3.0's
 * async_posix.c). CPython's call chains do not fit there, so inside a job nothing enters Python:
 * the signature goes to a thread of a small pool owned by the provider, which calls the same
 * Python sign entry as a synchronous caller does, on its own stack. The job registers an eventfd
 * with its wait context, pauses, and the host polls the fd along with its sockets; the pool thread
 * signals it when the HSM has answered, and the resumed job takes the result.
 *
 * One channel per wait context (per connection), reused by the connection's later jobs: HAProxy
 * forgets an async fd only when it frees the connection, so the fd lives as long as the wait
 * context. Two parties hold a channel: the wait context (until its cleanup callback, at SSL_free)
 * and the pool thread while a signature is in flight. The last to let go closes the fd and frees
 * the channel, so a client that leaves mid-sign (its job is never resumed) never gets its fd
 * written after close, and the fd is closed exactly once.
 *
 * Fork: the pool records its process. A child that signs starts a pool of its own and never
 * touches the parent's (a parent thread may have held its lock at the fork). No thread starts
 * before the first signature inside a job, so a host that forks its workers after loading keys
 * forks a process without threads of ours.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define MHSM_POOL_MAX_THREADS 32 /* above the core's default MaxConnections (20), which bounds the HSM calls */
#define MHSM_CHANNEL_BYTES 1024  /* input and signature: RSA-4096 is 512 bytes, DER P-521 139 */

typedef struct mhsm_channel {
    int refs;              /* the wait context's (none for a private channel) + 1 while in flight */
    int fd;                /* eventfd: readable when `done` */
    pid_t pid;             /* the process that made it or last queued a signature on it */
    pthread_mutex_t lock;  /* `done` and the eventfd's counter change together under it */
    int done;
    int busy;              /* a signature was queued and its job has not taken the answer yet */
    struct mhsm_channel *next; /* in the pool's queue */
    /* the request, copied: the job's memory is not the pool thread's to read */
    long handle;
    char digest[64], mgf1[64];
    int pad_mode, saltlen;
    unsigned char data[MHSM_CHANNEL_BYTES];
    size_t data_len;
    /* the answer */
    int ok;
    unsigned char sig[MHSM_CHANNEL_BYTES];
    size_t sig_len;
    char error[MHSM_ERROR_LINE]; /* the one OpenSSL error line the Python side raised, for the job to raise */
} mhsm_channel;

typedef struct {
    pid_t pid;
    pthread_mutex_t lock;
    pthread_cond_t work;
    mhsm_channel *head, *tail;
    int queued, idle, threads;
} mhsm_pool;

static mhsm_pool *mhsm_the_pool;   /* this process's, or a parent's (its pid says which) */
static const char mhsm_channel_key; /* our entry in a wait context: its address is the key */

static void mhsm_channel_unref(mhsm_channel *ch)
{
    if (__atomic_sub_fetch(&ch->refs, 1, __ATOMIC_ACQ_REL) == 0) {
        close(ch->fd);
        pthread_mutex_destroy(&ch->lock);
        free(ch);
    }
}

/* ASYNC_WAIT_CTX_free (SSL_free): the connection is gone, maybe with a signature in flight. */
static void mhsm_channel_cleanup(ASYNC_WAIT_CTX *waitctx, const void *key, OSSL_ASYNC_FD fd, void *custom)
{
    (void)waitctx, (void)key, (void)fd;
    mhsm_channel_unref(custom);
}

static mhsm_channel *mhsm_channel_new(int refs)
{
    mhsm_channel *ch = calloc(1, sizeof(*ch));
    if (!ch) {
        mhsm_raise("out of memory");
        return NULL;
    }
    ch->fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (ch->fd < 0) {
        mhsm_vraise("cannot create an eventfd for an asynchronous signature: %s (each handshaking "
                    "connection needs one more file descriptor)", strerror(errno));
        free(ch);
        return NULL;
    }
    ch->refs = refs;
    ch->pid = getpid();
    pthread_mutex_init(&ch->lock, NULL);
    return ch;
}

/* The connection's channel, made and registered with its wait context on its first signature. */
static mhsm_channel *mhsm_channel_for(ASYNC_WAIT_CTX *waitctx)
{
    OSSL_ASYNC_FD fd;
    void *custom = NULL;
    if (ASYNC_WAIT_CTX_get_fd(waitctx, &mhsm_channel_key, &fd, &custom)) {
        mhsm_channel *ch = custom;
        if (ch->pid != getpid()) { /* its lock may be a parent thread's: leave it alone */
            mhsm_raise("this connection's signature channel was made before the process forked");
            return NULL;
        }
        return ch;
    }
    mhsm_channel *ch = mhsm_channel_new(1);
    if (ch && !ASYNC_WAIT_CTX_set_wait_fd(waitctx, &mhsm_channel_key, ch->fd, ch, mhsm_channel_cleanup)) {
        mhsm_raise("cannot register an eventfd with the connection's ASYNC wait context");
        mhsm_channel_unref(ch);
        return NULL;
    }
    return ch;
}

/* On a pool thread: the signature, as a synchronous caller would make it, then the wake-up. */
static void mhsm_channel_run(mhsm_channel *ch)
{
    struct mhsm_sign_request request = {ch->digest, ch->pad_mode, ch->saltlen, ch->mgf1, ch->data, ch->data_len};
    size_t sig_len = sizeof(ch->sig);
    embed_guard guard;
    ch->error[0] = '\0';
    mhsm_error_sink = ch->error;
    int ok = mhsm_python_enter(&guard);
    if (ok) {
        ok = py_sign(ch->handle, &request, ch->sig, &sig_len);
        mhsm_python_leave(&guard);
    }
    mhsm_error_sink = NULL;
    const uint64_t one = 1;
    pthread_mutex_lock(&ch->lock);
    ch->ok = ok, ch->sig_len = sig_len, ch->done = 1;
    if (write(ch->fd, &one, sizeof(one)) != sizeof(one)) /* cannot fail: the counter is 0 here */
        ch->ok = 0;
    pthread_mutex_unlock(&ch->lock);
    mhsm_channel_unref(ch);
}

static void *mhsm_pool_thread(void *arg)
{
    mhsm_pool *pool = arg;
    for (;;) {
        pthread_mutex_lock(&pool->lock);
        while (!pool->head) {
            pool->idle++;
            pthread_cond_wait(&pool->work, &pool->lock);
            pool->idle--;
        }
        mhsm_channel *ch = pool->head;
        pool->head = ch->next;
        if (!pool->head)
            pool->tail = NULL;
        pool->queued--;
        pthread_mutex_unlock(&pool->lock);
        mhsm_channel_run(ch);
    }
    return NULL;
}

/* This process's pool, made on first use; a parent's pool is left as it is (its threads are not here). */
static mhsm_pool *mhsm_pool_get(void)
{
    pid_t pid = getpid();
    mhsm_pool *pool = __atomic_load_n(&mhsm_the_pool, __ATOMIC_ACQUIRE);
    while (!pool || pool->pid != pid) {
        mhsm_pool *fresh = calloc(1, sizeof(*fresh));
        if (!fresh)
            return NULL;
        fresh->pid = pid;
        pthread_mutex_init(&fresh->lock, NULL);
        pthread_cond_init(&fresh->work, NULL);
        if (__atomic_compare_exchange_n(&mhsm_the_pool, &pool, fresh, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            return fresh;
        pthread_cond_destroy(&fresh->work); /* another thread made it first; `pool` is now that one */
        pthread_mutex_destroy(&fresh->lock);
        free(fresh);
    }
    return pool;
}

/* A pool thread takes no signals: the host's handlers (HAProxy's reload and stop) stay on its threads. */
static int mhsm_pool_spawn(mhsm_pool *pool)
{
    pthread_t thread;
    pthread_attr_t attr;
    sigset_t all, old;
    sigfillset(&all);
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int ok = pthread_create(&thread, &attr, mhsm_pool_thread, pool) == 0;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    if (ok)
        pthread_setname_np(thread, "mhsm-sign");
    return ok;
}

static int mhsm_pool_submit(mhsm_channel *ch)
{
    mhsm_pool *pool = mhsm_pool_get();
    if (!pool) {
        mhsm_raise("out of memory");
        return 0;
    }
    pthread_mutex_lock(&pool->lock);
    ch->next = NULL;
    if (pool->tail)
        pool->tail->next = ch;
    else
        pool->head = ch;
    pool->tail = ch;
    pool->queued++;
    if (pool->queued > pool->idle && pool->threads < MHSM_POOL_MAX_THREADS && mhsm_pool_spawn(pool))
        pool->threads++;
    int served = pool->threads > 0;
    if (served)
        pthread_cond_signal(&pool->work);
    else { /* not even one thread could start: take the request back */
        pool->head = pool->tail = NULL;
        pool->queued = 0;
    }
    pthread_mutex_unlock(&pool->lock);
    if (!served)
        mhsm_raise("cannot start a signing thread");
    return served;
}

static int mhsm_channel_fill(mhsm_channel *ch, long handle, const struct mhsm_sign_request *request)
{
    if (ch->busy) { /* libssl runs one job per connection at a time; anything else is a host's bug */
        mhsm_raise("a signature is already in flight on this connection's ASYNC wait context");
        return 0;
    }
    if (request->data_len > sizeof(ch->data) || strlen(request->digest) >= sizeof(ch->digest) ||
        strlen(request->mgf1) >= sizeof(ch->mgf1)) {
        mhsm_raise("a signature request larger than the provider passes to its signing threads");
        return 0;
    }
    ch->handle = handle;
    strcpy(ch->digest, request->digest);
    strcpy(ch->mgf1, request->mgf1);
    ch->pad_mode = request->pad_mode, ch->saltlen = request->saltlen;
    memcpy(ch->data, request->data, request->data_len);
    ch->data_len = request->data_len;
    ch->done = 0, ch->busy = 1;
    ch->pid = getpid();
    return 1;
}

/* 1 when the channel's signature is done (and its wake-up consumed), 0 while in flight, -1 if forked. */
static int mhsm_channel_take(mhsm_channel *ch)
{
    uint64_t count;
    if (ch->pid != getpid())
        return -1;
    pthread_mutex_lock(&ch->lock);
    int done = ch->done;
    ssize_t drained = done ? read(ch->fd, &count, sizeof(count)) : 0; /* so the fd stops firing */
    ch->busy = !done;
    pthread_mutex_unlock(&ch->lock);
    (void)drained;
    return done;
}

/*
 * Sign inside an ASYNC job, off the job's stack. With a wait context the job pauses until the fd
 * fires (the host resumes it, maybe early: then it pauses again); without one (a job started with
 * no wait context) the thread waits on the fd itself, still with Python on the pool's stack.
 */
static int mhsm_offstack_sign(ASYNC_JOB *job, long handle, const struct mhsm_sign_request *request,
                              unsigned char *sig, size_t *siglen)
{
    ASYNC_WAIT_CTX *waitctx = ASYNC_get_wait_ctx(job);
    mhsm_channel *ch = waitctx ? mhsm_channel_for(waitctx) : mhsm_channel_new(1);
    int state = 0;
    if (!ch)
        return 0;
    if (mhsm_channel_fill(ch, handle, request)) {
        __atomic_add_fetch(&ch->refs, 1, __ATOMIC_ACQ_REL); /* the pool thread's */
        if (!mhsm_pool_submit(ch)) {
            __atomic_sub_fetch(&ch->refs, 1, __ATOMIC_ACQ_REL);
            ch->busy = 0;
        } else
            while ((state = mhsm_channel_take(ch)) == 0) {
                struct pollfd wait = {ch->fd, POLLIN, 0};
                if (!waitctx || !ASYNC_pause_job())
                    (void)poll(&wait, 1, -1);
            }
    }
    int ok = state == 1 && ch->ok;
    if (state == -1)
        mhsm_raise("the process forked while this signature was in flight; the child cannot finish it");
    else if (state == 1 && !ch->ok)
        mhsm_raise(ch->error[0] ? ch->error : "the signature failed");
    else if (ok && ch->sig_len > *siglen) {
        mhsm_vraise("a %zu-byte signature does not fit the caller's %zu-byte buffer", ch->sig_len, *siglen);
        ok = 0;
    }
    if (ok) {
        memcpy(sig, ch->sig, ch->sig_len);
        *siglen = ch->sig_len;
    }
    if (!waitctx)
        mhsm_channel_unref(ch); /* a private channel; the wait context's lives until SSL_free */
    return ok;
}
