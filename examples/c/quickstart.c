/*
 * The README quickstart in C, between two nodes on 127.0.0.1 (no relays, no LAN discovery):
 * replication both ways, leader election, events. Build and run: see README.md, "Using from C".
 *
 *   ./quickstart [data-dir]      (default: a new directory under /tmp)
 */
#define _POSIX_C_SOURCE 200809L
#include <murmur.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CHECK(call)                                                                  \
    do {                                                                             \
        MurmurStatus st_ = (call);                                                   \
        if (st_ != MURMUR_OK) {                                                      \
            fprintf(stderr, "%s:%d: %s failed: %s: %s\n", __FILE__, __LINE__, #call, \
                    murmur_status_name(st_), murmur_last_error_message());           \
            exit(1);                                                                 \
        }                                                                            \
    } while (0)

/* What node B's event callback saw (callbacks run on library threads: lock). */
struct seen {
    pthread_mutex_t lock;
    char put_origin[128];
    int puts;
    int deletes;
    int leader_changes;
    int peers_up;
};

static void on_event(void *user_data, const MurmurEvent *ev) {
    struct seen *s = user_data;
    pthread_mutex_lock(&s->lock);
    switch (ev->kind) {
    case MURMUR_EVENT_PUT:
        if (strcmp(ev->key, "user:123") == 0) {
            s->puts++;
            snprintf(s->put_origin, sizeof s->put_origin, "%s", ev->origin);
        }
        break;
    case MURMUR_EVENT_DELETED: s->deletes++; break;
    case MURMUR_EVENT_LEADER_CHANGED: s->leader_changes++; break;
    case MURMUR_EVENT_PEER_UP: s->peers_up++; break;
    /* The replica could not store something (disk full, database locked by another program):
     * it retries by itself; an app may want to tell its user. */
    case MURMUR_EVENT_STORAGE_FAILED: fprintf(stderr, "storage failed: %s\n", ev->error); break;
    case MURMUR_EVENT_STORAGE_RECOVERED: fprintf(stderr, "storage works again\n"); break;
    default: break;
    }
    pthread_mutex_unlock(&s->lock);
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void sleep_ms(long ms) {
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

/* Polls cond(arg) every 20 ms for up to 60 s. */
static void wait_until(const char *what, int (*cond)(void *), void *arg) {
    double deadline = now() + 60;
    while (!cond(arg)) {
        if (now() > deadline) {
            fprintf(stderr, "timed out waiting for: %s\n", what);
            exit(1);
        }
        sleep_ms(20);
    }
}

static MurmurSwarm *a, *b;
static char *id_a, *id_b;

static MurmurConfig *node_config(const char *dir) {
    MurmurConfig *cfg = murmur_config_new();
    if (!cfg) exit(1);
    CHECK(murmur_config_set_storage_path(cfg, dir));
    CHECK(murmur_config_set_swarm_name(cfg, "quickstart-c"));
    CHECK(murmur_config_set_bind_addr(cfg, "127.0.0.1:0"));
    CHECK(murmur_config_set_relay_mode(cfg, MURMUR_RELAY_DISABLED, NULL));
    CHECK(murmur_config_set_local_discovery(cfg, false));
    CHECK(murmur_config_set_heartbeat_ms(cfg, 100));
    CHECK(murmur_config_set_leader_timeout_ms(cfg, 500));
    return cfg;
}

/* Whether `s` holds `key` with `want` (want NULL: absent). */
static int holds(MurmurSwarm *s, const char *key, const char *want) {
    MurmurBytes v;
    bool found;
    CHECK(murmur_get(s, key, &v, &found));
    int ok = want ? (found && v.len == strlen(want) && memcmp(v.ptr, want, v.len) == 0) : !found;
    murmur_bytes_free(v);
    return ok;
}

static int b_has_alice(void *arg) { (void)arg; return holds(b, "user:123", "Alice"); }
static int a_has_bob(void *arg) { (void)arg; return holds(a, "user:456", "Bob"); }
static int a_lost_alice(void *arg) { (void)arg; return holds(a, "user:123", NULL); }

/* Both nodes name the same leader, the greater ID, and exactly one says it leads. */
static int agree_on_leader(void *arg) {
    const char *expected = arg;
    MurmurSwarm *nodes[2] = {a, b};
    int leaders = 0;
    for (int i = 0; i < 2; i++) {
        char *l = NULL;
        bool me = false;
        CHECK(murmur_leader_id(nodes[i], &l));
        CHECK(murmur_is_leader(nodes[i], &me));
        int same = l && strcmp(l, expected) == 0;
        murmur_string_free(l);
        if (!same) return 0;
        leaders += me;
    }
    return leaders == 1;
}

static int saw_events(void *arg) {
    struct seen *s = arg;
    pthread_mutex_lock(&s->lock);
    int ok = s->puts >= 1 && s->deletes >= 1 && s->leader_changes >= 1 && s->peers_up >= 1;
    pthread_mutex_unlock(&s->lock);
    return ok;
}

int main(int argc, char **argv) {
    char base[256];
    if (argc > 1) {
        snprintf(base, sizeof base, "%s", argv[1]);
    } else {
        snprintf(base, sizeof base, "/tmp/murmur-quickstart-XXXXXX");
        if (!mkdtemp(base)) { perror("mkdtemp"); return 1; }
    }
    char dir_a[300], dir_b[300];
    snprintf(dir_a, sizeof dir_a, "%s/a", base);
    snprintf(dir_b, sizeof dir_b, "%s/b", base);
    printf("murmur %s\n", murmur_version());

    /* Node A. */
    MurmurConfig *cfg_a = node_config(dir_a);
    CHECK(murmur_open(cfg_a, &a));
    CHECK(murmur_config_free(cfg_a));
    CHECK(murmur_start(a)); /* begins networking and election */
    char *ticket = NULL;
    CHECK(murmur_ticket(a, &ticket));

    /* Node B joins through A's ticket. */
    MurmurConfig *cfg_b = node_config(dir_b);
    CHECK(murmur_config_add_bootstrap(cfg_b, ticket));
    murmur_string_free(ticket);
    CHECK(murmur_open(cfg_b, &b));
    CHECK(murmur_config_free(cfg_b));
    struct seen seen = {.lock = PTHREAD_MUTEX_INITIALIZER};
    MurmurSubscription *sub = NULL;
    CHECK(murmur_subscribe(b, on_event, &seen, &sub));
    CHECK(murmur_start(b));
    CHECK(murmur_node_id(a, &id_a));
    CHECK(murmur_node_id(b, &id_b));

    /* Replication: a write on A reaches B, and one on B reaches A. */
    CHECK(murmur_put(a, "user:123", (const uint8_t *)"Alice", 5));
    wait_until("user:123 on B", b_has_alice, NULL);
    printf("replicated A -> B: user:123 = Alice\n");
    CHECK(murmur_put(b, "user:456", (const uint8_t *)"Bob", 3));
    wait_until("user:456 on A", a_has_bob, NULL);
    printf("replicated B -> A: user:456 = Bob\n");

    /* Leader: both agree on the node with the greater ID. */
    const char *expected = strcmp(id_a, id_b) > 0 ? id_a : id_b;
    wait_until("agreement on the leader", agree_on_leader, (void *)expected);
    printf("leader agreed: %s\n", expected == id_a ? "A" : "B");

    /* A delete on B reaches A. */
    CHECK(murmur_delete(b, "user:123"));
    wait_until("user:123 deleted on A", a_lost_alice, NULL);
    printf("deleted everywhere: user:123\n");

    /* Events seen by B. */
    wait_until("events on B", saw_events, &seen);
    CHECK(murmur_unsubscribe(sub)); /* no callback runs after this returns */
    printf("events on B: put from A: %s, deleted, leader changed, peer up\n",
           strcmp(seen.put_origin, id_a) == 0 ? "yes" : "no");

    MurmurPeerInfo *peers = NULL;
    size_t n = 0;
    CHECK(murmur_peers(a, &peers, &n));
    printf("A knows %zu peer(s), first connected: %s\n", n, n > 0 && peers[0].connected ? "yes" : "no");
    for (size_t i = 0; i < n; i++) {
        if (peers[i].clock_offset_known)
            printf("  %.8s... clock offset %+lld ms\n", peers[i].id, (long long)peers[i].clock_offset_ms);
        else
            printf("  %.8s... clock offset not measured yet\n", peers[i].id);
    }
    murmur_peers_free(peers, n);

    CHECK(murmur_shutdown(b));
    CHECK(murmur_shutdown(a));
    CHECK(murmur_free(b));
    CHECK(murmur_free(a));
    murmur_string_free(id_a);
    murmur_string_free(id_b);
    printf("quickstart ok\n");
    return 0;
}
