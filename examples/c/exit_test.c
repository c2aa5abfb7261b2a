/* Process exit with Murmur still busy: each scenario ends the process in an awkward order
 * (live subscriptions, no shutdown, exit() from a callback, exit while a write is in flight).
 * The process must exit with the code it asked for (0), never crash or hang.
 * scripts/test-c.sh runs every scenario many times.
 *
 * Usage: exit_test <scenario> <data-dir>    (no scenario: list them) */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "murmur.h"

#define CHECK(call)                                                                          \
    do {                                                                                     \
        enum MurmurStatus st_ = (call);                                                      \
        if (st_ != MURMUR_OK) {                                                              \
            fprintf(stderr, "%s:%d: %s: %s (%s)\n", __FILE__, __LINE__, #call,               \
                    murmur_status_name(st_), murmur_last_error_message());                   \
            exit(2);                                                                         \
        }                                                                                    \
    } while (0)

static atomic_int events;
static MurmurSwarm *node;

static void counting(void *ud, const struct MurmurEvent *ev) {
    (void)ud;
    (void)ev;
    atomic_fetch_add(&events, 1);
}

static void exits(void *ud, const struct MurmurEvent *ev) {
    (void)ud;
    if (ev->kind == MURMUR_EVENT_PUT) exit(0);
}

static void shuts_down(void *ud, const struct MurmurEvent *ev) {
    (void)ud;
    /* A blocking call from a callback is refused with a clear error, never a deadlock; the
     * callback variant works. */
    if (ev->kind == MURMUR_EVENT_PUT) murmur_shutdown_async(node, NULL, NULL);
}

static MurmurSwarm *open_node(const char *dir) {
    MurmurConfig *cfg = murmur_config_new();
    CHECK(murmur_config_set_storage_path(cfg, dir));
    CHECK(murmur_config_set_swarm_name(cfg, "exit-test-c"));
    CHECK(murmur_config_set_bind_addr(cfg, "127.0.0.1:0"));
    CHECK(murmur_config_set_relay_mode(cfg, MURMUR_RELAY_DISABLED, NULL));
    CHECK(murmur_config_set_local_discovery(cfg, false));
    CHECK(murmur_config_set_heartbeat_ms(cfg, 50));
    CHECK(murmur_config_set_leader_timeout_ms(cfg, 200));
    MurmurSwarm *s = NULL;
    CHECK(murmur_open(cfg, &s));
    CHECK(murmur_config_free(cfg));
    CHECK(murmur_start(s));
    return s;
}

static void wait_events(int n) {
    for (int i = 0; i < 3000 && atomic_load(&events) < n; i++) {
        struct timespec t = {0, 10 * 1000000L};
        nanosleep(&t, NULL);
    }
    if (atomic_load(&events) < n) {
        fprintf(stderr, "no event within 30 s\n");
        exit(2);
    }
}

static void *writer(void *arg) {
    (void)arg;
    char key[32];
    for (int i = 0;; i++) {
        snprintf(key, sizeof key, "k%d", i);
        if (murmur_put(node, key, (const uint8_t *)"v", 1) != MURMUR_OK) return NULL;
    }
}

int main(int argc, char **argv) {
    static const char *scenarios[] = {"live_subscriptions_no_shutdown", "exit_from_callback",
                                      "shutdown_from_callback", "exit_while_write_in_flight",
                                      "shutdown_without_unsubscribe", NULL};
    if (argc < 3) {
        for (int i = 0; scenarios[i]; i++) printf("%s\n", scenarios[i]);
        return argc == 1 ? 0 : 2;
    }
    const char *s = argv[1];
    MurmurSubscription *sub = NULL, *sub2 = NULL;
    node = open_node(argv[2]);
    if (!strcmp(s, "live_subscriptions_no_shutdown")) {
        CHECK(murmur_subscribe(node, counting, NULL, &sub));
        CHECK(murmur_subscribe(node, counting, NULL, &sub2));
        for (int i = 0; i < 20; i++) CHECK(murmur_put(node, "k", (const uint8_t *)"v", 1));
        wait_events(1);
        return 0; /* events still flowing, nothing released */
    } else if (!strcmp(s, "exit_from_callback")) {
        CHECK(murmur_subscribe(node, counting, NULL, &sub));
        CHECK(murmur_subscribe(node, exits, NULL, &sub2));
        CHECK(murmur_put(node, "k", (const uint8_t *)"v", 1));
        for (;;) { /* the callback exits the process */
            struct timespec t = {0, 10 * 1000000L};
            nanosleep(&t, NULL);
        }
    } else if (!strcmp(s, "shutdown_from_callback")) {
        CHECK(murmur_subscribe(node, counting, NULL, &sub));
        CHECK(murmur_subscribe(node, shuts_down, NULL, &sub2));
        CHECK(murmur_put(node, "k", (const uint8_t *)"v", 1));
        wait_events(1);
        return 0;
    } else if (!strcmp(s, "exit_while_write_in_flight")) {
        CHECK(murmur_subscribe(node, counting, NULL, &sub));
        pthread_t t;
        pthread_create(&t, NULL, writer, NULL);
        wait_events(5);
        return 0; /* the writer thread is inside murmur_put */
    } else if (!strcmp(s, "shutdown_without_unsubscribe")) {
        CHECK(murmur_subscribe(node, counting, NULL, &sub));
        CHECK(murmur_put(node, "k", (const uint8_t *)"v", 1));
        wait_events(1);
        CHECK(murmur_shutdown(node));
        return 0; /* neither murmur_unsubscribe nor murmur_free */
    }
    fprintf(stderr, "unknown scenario %s\n", s);
    return 2;
}
