/*
 * TLS client load: THREADS clients, each either making full handshakes in a loop (a new
 * connection and no session reuse, so the server signs once per handshake) or, with `keepalive`,
 * sending HTTP requests over one connection opened before the clock starts, 2 ms apart (so its
 * latencies sample the server over time, rather than mostly the moments it is free). Every handshake
 * verifies the server's chain against CAFILE and its name (localhost); every request must get
 * "HTTP/1.1 200". Thread i uses the i-th port of the list, cyclically (an RSA and an EC server).
 *
 *   tlsload PORT[,PORT...] CAFILE handshake|keepalive THREADS COUNT|tSECONDS
 *
 * C, like the other generators: the client's own TLS work must not be what limits the figure.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "loadgen.h"

static SSL_CTX *context;
static int ports[16], nports, keepalive;

typedef struct {
    int port;
    int fd;
    SSL *ssl; /* keepalive: the connection kept open */
} client;

static int dial(int port)
{
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&to, sizeof(to)) == 0) {
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        return fd;
    }
    if (fd >= 0)
        close(fd);
    return -1;
}

/* A verified handshake on a new connection; NULL on failure. */
static SSL *handshake(client *c)
{
    c->fd = dial(c->port);
    SSL *ssl = c->fd >= 0 ? SSL_new(context) : NULL;
    if (ssl && SSL_set_fd(ssl, c->fd) && SSL_set1_host(ssl, "localhost") &&
        SSL_set_tlsext_host_name(ssl, "localhost") && SSL_connect(ssl) == 1)
        return ssl;
    SSL_free(ssl);
    if (c->fd >= 0)
        close(c->fd);
    return NULL;
}

/* One GET; 1 when the whole "HTTP/1.1 200" response (headers and Content-Length body) arrived. */
static int request(SSL *ssl, int close_after)
{
    char buf[4096];
    const char *get = close_after ? "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
                                  : "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
    int have = 0, n;
    if (SSL_write(ssl, get, (int)strlen(get)) <= 0)
        return 0;
    while (have < (int)sizeof(buf) - 1 && (n = SSL_read(ssl, buf + have, (int)sizeof(buf) - 1 - have)) > 0) {
        have += n;
        buf[have] = '\0';
        char *end = strstr(buf, "\r\n\r\n");
        if (!end)
            continue;
        long length = 0;
        for (char *line = strstr(buf, "\r\n"); line && line < end; line = strstr(line + 2, "\r\n"))
            if (!strncasecmp(line + 2, "content-length:", 15))
                length = atol(line + 17);
        if (have >= (end - buf) + 4 + length)
            return !strncmp(buf, "HTTP/1.1 200", 12);
    }
    return 0;
}

static void *worker_setup(int index)
{
    client *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->port = ports[index % nports];
    if (keepalive && !(c->ssl = handshake(c))) {
        fprintf(stderr, "tlsload: cannot connect to port %d\n", c->port);
        free(c);
        return NULL;
    }
    return c;
}

static int sign_once(void *state)
{
    client *c = state;
    if (keepalive)
        return request(c->ssl, 0);
    SSL *ssl = handshake(c);
    int ok = ssl && request(ssl, 1);
    if (ssl) {
        SSL_shutdown(ssl);
        SSL_free(ssl);
        close(c->fd);
    }
    ERR_clear_error();
    return ok;
}

int main(int argc, char **argv)
{
    if (argc < 6) {
        fprintf(stderr, "usage: tlsload PORT[,PORT...] CAFILE handshake|keepalive THREADS COUNT|tSECONDS\n");
        return 2;
    }
    for (char *p = strtok(argv[1], ","); p && nports < 16; p = strtok(NULL, ","))
        ports[nports++] = atoi(p);
    keepalive = !strcmp(argv[3], "keepalive");
    load_pause_us = keepalive ? 2000 : 0;
    signal(SIGPIPE, SIG_IGN); /* the server closes first after Connection: close */
    context = SSL_CTX_new(TLS_client_method());
    if (!context || nports == 0 || SSL_CTX_load_verify_locations(context, argv[2], NULL) != 1) {
        fprintf(stderr, "tlsload: cannot read the CA file %s\n", argv[2]);
        return 2;
    }
    SSL_CTX_set_verify(context, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_session_cache_mode(context, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(context, SSL_OP_NO_TICKET);
    return run_load(atoi(argv[4]), argv[5]);
}
