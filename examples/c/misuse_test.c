/*
 * Misuse of the C ABI gets error codes, never a crash: NULL handles and arguments, invalid
 * UTF-8, oversized keys and values, calls after shutdown, double frees, blocking calls from a
 * callback. Prints one line per check and exits non-zero if any failed.
 *
 *   ./misuse_test [data-dir]      (default: a new directory under /tmp)
 */
#define _POSIX_C_SOURCE 200809L
#include <murmur.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int passed, failed;

static void expect(const char *what, MurmurStatus got, MurmurStatus want) {
    if (got == want) {
        passed++;
        printf("ok   %-55s %s\n", what, murmur_status_name(got));
    } else {
        failed++;
        printf("FAIL %-55s got %s (%s), want %s\n", what, murmur_status_name(got),
               murmur_last_error_message(), murmur_status_name(want));
    }
}

static void expect_true(const char *what, int cond) {
    if (cond) {
        passed++;
        printf("ok   %s\n", what);
    } else {
        failed++;
        printf("FAIL %s\n", what);
    }
}

/* Results of the callbacks (they run on library threads). */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int done_calls;
static MurmurStatus done_status, blocking_put_status, blocking_get_status, blocking_shutdown_status;
static char done_message[256];
static MurmurSwarm *swarm;

/* A completion callback that also tries blocking calls, which must be refused. */
static void on_done(void *user_data, MurmurStatus status) {
    (void)user_data;
    /* Read the message first: the next murmur call on this thread replaces it. */
    char message[256];
    snprintf(message, sizeof message, "%s", status == MURMUR_OK ? "" : murmur_last_error_message());
    MurmurStatus p = murmur_put(swarm, "from-callback", (const uint8_t *)"x", 1);
    MurmurBytes v;
    bool found;
    MurmurStatus g = murmur_get(swarm, "k", &v, &found);
    MurmurStatus s = murmur_shutdown(swarm);
    pthread_mutex_lock(&lock);
    done_status = status;
    memcpy(done_message, message, sizeof done_message);
    blocking_put_status = p;
    blocking_get_status = g;
    blocking_shutdown_status = s;
    done_calls++;
    pthread_cond_broadcast(&cond);
    pthread_mutex_unlock(&lock);
}

/* Waits (at most 30 s) until on_done ran `n` times in total. */
static int wait_done(int n) {
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 30;
    pthread_mutex_lock(&lock);
    while (done_calls < n) {
        if (pthread_cond_timedwait(&cond, &lock, &deadline) != 0) break;
    }
    int ok = done_calls >= n;
    pthread_mutex_unlock(&lock);
    return ok;
}

static void on_event(void *user_data, const MurmurEvent *ev) {
    (void)user_data;
    (void)ev;
}

int main(int argc, char **argv) {
    char dir[256];
    if (argc > 1) {
        snprintf(dir, sizeof dir, "%s", argv[1]);
    } else {
        snprintf(dir, sizeof dir, "/tmp/murmur-misuse-XXXXXX");
        if (!mkdtemp(dir)) { perror("mkdtemp"); return 1; }
    }
    MurmurBytes v;
    bool found, leader;
    char *s = NULL;
    size_t n;

    /* Config misuse. */
    expect("config setter on NULL config", murmur_config_set_storage_path(NULL, dir), MURMUR_ERR_NULL_ARG);
    MurmurConfig *cfg = murmur_config_new();
    expect_true("config_new returns a handle", cfg != NULL);
    expect("NULL storage path", murmur_config_set_storage_path(cfg, NULL), MURMUR_ERR_NULL_ARG);
    expect("storage path not UTF-8", murmur_config_set_storage_path(cfg, "\xff\xfe"), MURMUR_ERR_INVALID_UTF8);
    uint8_t short_key[8] = {0};
    expect("swarm key of 8 bytes", murmur_config_set_swarm_key(cfg, short_key, sizeof short_key), MURMUR_ERR_CONFIG);
    expect("unparsable bind address", murmur_config_set_bind_addr(cfg, "not an address"), MURMUR_ERR_CONFIG);
    expect("unknown relay mode", murmur_config_set_relay_mode(cfg, 42, NULL), MURMUR_ERR_CONFIG);
    expect("custom relay without URL", murmur_config_set_relay_mode(cfg, MURMUR_RELAY_CUSTOM, NULL), MURMUR_ERR_NULL_ARG);
    expect("unknown durability", murmur_config_set_durability(cfg, 9), MURMUR_ERR_CONFIG);
    expect_true("last error message explains", strstr(murmur_last_error_message(), "durability") != NULL);
    expect("storage path", murmur_config_set_storage_path(cfg, dir), MURMUR_OK);
    expect_true("last error cleared on success", strcmp(murmur_last_error_message(), "") == 0);
    expect("bind address", murmur_config_set_bind_addr(cfg, "127.0.0.1:0"), MURMUR_OK);
    expect("relays off", murmur_config_set_relay_mode(cfg, MURMUR_RELAY_DISABLED, NULL), MURMUR_OK);
    expect("local discovery off", murmur_config_set_local_discovery(cfg, false), MURMUR_OK);
    expect("heartbeat", murmur_config_set_heartbeat_ms(cfg, 100), MURMUR_OK);
    expect("leader timeout", murmur_config_set_leader_timeout_ms(cfg, 500), MURMUR_OK);
    expect("durability", murmur_config_set_durability(cfg, MURMUR_DURABILITY_PROCESS), MURMUR_OK);
    expect("max value size", murmur_config_set_max_value_size(cfg, 1024), MURMUR_OK);
    expect("max clock offset on NULL config", murmur_config_set_max_clock_offset_ms(NULL, 1000), MURMUR_ERR_NULL_ARG);
    expect("max clock offset", murmur_config_set_max_clock_offset_ms(cfg, 60000), MURMUR_OK);
    expect_true("clock skew has its own status",
                strcmp(murmur_status_name(MURMUR_ERR_CLOCK_SKEW), "MURMUR_ERR_CLOCK_SKEW") == 0);
    expect("open with NULL config", murmur_open(NULL, &swarm), MURMUR_ERR_NULL_ARG);
    expect("open with NULL output", murmur_open(cfg, NULL), MURMUR_ERR_NULL_ARG);
    MurmurConfig *bad = murmur_config_new();
    expect("bad bootstrap peer accepted by the config", murmur_config_add_bootstrap(bad, "garbage"), MURMUR_OK);
    expect("open with a bad bootstrap peer", murmur_open(bad, &swarm), MURMUR_ERR_INVALID_TICKET);
    expect("free config", murmur_config_free(bad), MURMUR_OK);
    expect("double free of a config", murmur_config_free(bad), MURMUR_ERR_INVALID_HANDLE);
    expect("use of a freed config", murmur_config_set_max_peers(bad, 3), MURMUR_ERR_INVALID_HANDLE);
    expect("free NULL config", murmur_config_free(NULL), MURMUR_OK);

    expect("open", murmur_open(cfg, &swarm), MURMUR_OK);
    MurmurSwarm *second = NULL;
    expect("second open of the same directory", murmur_open(cfg, &second), MURMUR_ERR_LOCKED);
    expect("free config after open", murmur_config_free(cfg), MURMUR_OK);
    expect("start", murmur_start(swarm), MURMUR_OK);

    /* Swarm misuse. */
    expect("put on NULL swarm", murmur_put(NULL, "k", (const uint8_t *)"v", 1), MURMUR_ERR_NULL_ARG);
    expect("put with NULL key", murmur_put(swarm, NULL, (const uint8_t *)"v", 1), MURMUR_ERR_NULL_ARG);
    expect("put with NULL value of length 3", murmur_put(swarm, "k", NULL, 3), MURMUR_ERR_NULL_ARG);
    expect("put with key not UTF-8", murmur_put(swarm, "bad\xc3\x28", (const uint8_t *)"v", 1), MURMUR_ERR_INVALID_UTF8);
    expect("get with key not UTF-8", murmur_get(swarm, "\x80", &v, &found), MURMUR_ERR_INVALID_UTF8);
    expect("put with empty key", murmur_put(swarm, "", (const uint8_t *)"v", 1), MURMUR_ERR_INVALID_KEY);
    char long_key[MURMUR_MAX_KEY_LEN + 2];
    memset(long_key, 'k', sizeof long_key - 1);
    long_key[sizeof long_key - 1] = '\0';
    expect("put with a key over MURMUR_MAX_KEY_LEN", murmur_put(swarm, long_key, (const uint8_t *)"v", 1), MURMUR_ERR_INVALID_KEY);
    static uint8_t big[2048];
    expect("put of a value over max_value_size", murmur_put(swarm, "k", big, sizeof big), MURMUR_ERR_VALUE_TOO_LARGE);
    expect_true("value too large message", strstr(murmur_last_error_message(), "exceeds") != NULL);
    expect("get with NULL out_value", murmur_get(swarm, "k", NULL, &found), MURMUR_ERR_NULL_ARG);
    expect("get with NULL out_found", murmur_get(swarm, "k", &v, NULL), MURMUR_ERR_NULL_ARG);
    expect("is_leader with NULL out", murmur_is_leader(swarm, NULL), MURMUR_ERR_NULL_ARG);
    expect("node_id with NULL out", murmur_node_id(swarm, NULL), MURMUR_ERR_NULL_ARG);
    expect("put_async with NULL callback", murmur_put_async(swarm, "k", NULL, 0, NULL, NULL), MURMUR_ERR_NULL_ARG);
    expect("subscribe with NULL callback", murmur_subscribe(swarm, NULL, NULL, NULL), MURMUR_ERR_NULL_ARG);
    expect("put of an empty value", murmur_put(swarm, "k", NULL, 0), MURMUR_OK);
    expect("get it", murmur_get(swarm, "k", &v, &found), MURMUR_OK);
    expect_true("empty value found", found && v.len == 0);
    murmur_bytes_free(v);

    /* Blocking calls from a callback are refused; the callback sees the error message. */
    expect("put_async of an invalid key", murmur_put_async(swarm, "", NULL, 0, on_done, NULL), MURMUR_OK);
    expect_true("callback ran", wait_done(1));
    expect("callback got the error", done_status, MURMUR_ERR_INVALID_KEY);
    expect_true("callback read the error message", strstr(done_message, "invalid key") != NULL);
    expect("blocking put from a callback", blocking_put_status, MURMUR_ERR_WOULD_DEADLOCK);
    expect("blocking get from a callback", blocking_get_status, MURMUR_ERR_WOULD_DEADLOCK);
    expect("blocking shutdown from a callback", blocking_shutdown_status, MURMUR_ERR_WOULD_DEADLOCK);
    expect("delete_async", murmur_delete_async(swarm, "k", on_done, NULL), MURMUR_OK);
    expect_true("callback ran again", wait_done(2));
    expect("delete_async succeeded", done_status, MURMUR_OK);

    MurmurSubscription *sub = NULL;
    expect("subscribe", murmur_subscribe(swarm, on_event, NULL, &sub), MURMUR_OK);
    expect("unsubscribe", murmur_unsubscribe(sub), MURMUR_OK);
    expect("double unsubscribe", murmur_unsubscribe(sub), MURMUR_ERR_INVALID_HANDLE);
    expect("unsubscribe NULL", murmur_unsubscribe(NULL), MURMUR_OK);
    expect("subscribe again (kept over shutdown)", murmur_subscribe(swarm, on_event, NULL, &sub), MURMUR_OK);

    /* After shutdown: closed. */
    expect("shutdown", murmur_shutdown(swarm), MURMUR_OK);
    expect("second shutdown", murmur_shutdown(swarm), MURMUR_ERR_CLOSED);
    expect("put after shutdown", murmur_put(swarm, "k", (const uint8_t *)"v", 1), MURMUR_ERR_CLOSED);
    expect("get after shutdown", murmur_get(swarm, "k", &v, &found), MURMUR_ERR_CLOSED);
    expect("delete after shutdown", murmur_delete(swarm, "k"), MURMUR_ERR_CLOSED);
    expect("start after shutdown", murmur_start(swarm), MURMUR_ERR_CLOSED);
    expect("is_leader after shutdown", murmur_is_leader(swarm, &leader), MURMUR_ERR_CLOSED);
    expect("node_id after shutdown", murmur_node_id(swarm, &s), MURMUR_ERR_CLOSED);
    expect("keys after shutdown", murmur_len(swarm, &n), MURMUR_ERR_CLOSED);
    expect("put_async after shutdown", murmur_put_async(swarm, "k", NULL, 0, on_done, NULL), MURMUR_ERR_CLOSED);
    expect("subscribe after shutdown", murmur_subscribe(swarm, on_event, NULL, &sub), MURMUR_ERR_CLOSED);
    expect("unsubscribe after shutdown", murmur_unsubscribe(sub), MURMUR_OK);

    /* After free: the handle is refused. */
    expect("free", murmur_free(swarm), MURMUR_OK);
    expect("double free", murmur_free(swarm), MURMUR_ERR_INVALID_HANDLE);
    expect("put after free", murmur_put(swarm, "k", (const uint8_t *)"v", 1), MURMUR_ERR_INVALID_HANDLE);
    expect("free NULL", murmur_free(NULL), MURMUR_OK);
    murmur_string_free(NULL);
    murmur_bytes_free((MurmurBytes){NULL, 0});
    murmur_strings_free(NULL, 0);
    murmur_peers_free(NULL, 0);
    expect_true("frees of NULL are no-ops", 1);

    printf("misuse: %d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
