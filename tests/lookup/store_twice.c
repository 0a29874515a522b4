/*
 * A host that loads the same pkcs11: URI twice through the provider in one process, as nginx loads
 * a key in its master and again on reload: `store_twice URI`. After each load it prints how many
 * keys it got and waits for a line on stdin, so the test can read the emulator's counters between.
 */
#include <openssl/store.h>
#include <stdio.h>

static int load(const char *uri)
{
    int keys = 0;
    OSSL_STORE_CTX *store = OSSL_STORE_open(uri, NULL, NULL, NULL, NULL);
    while (store && !OSSL_STORE_eof(store)) {
        OSSL_STORE_INFO *info = OSSL_STORE_load(store);
        int type = info ? OSSL_STORE_INFO_get_type(info) : 0;
        keys += type == OSSL_STORE_INFO_PKEY || type == OSSL_STORE_INFO_PUBKEY;
        OSSL_STORE_INFO_free(info);
    }
    OSSL_STORE_close(store);
    return store ? keys : -1;
}

int main(int argc, char **argv)
{
    char line[16];
    if (argc != 2) {
        fprintf(stderr, "usage: store_twice URI\n");
        return 2;
    }
    for (int round = 0; round < 2; round++) {
        printf("%d\n", load(argv[1]));
        fflush(stdout);
        if (round == 0 && !fgets(line, sizeof(line), stdin))
            return 1;
    }
    return 0;
}
