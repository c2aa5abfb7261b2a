// RAII over the Murmur C ABI: handles owned by std::unique_ptr with the library's free
// functions as deleters, errors as exceptions, library strings copied into std::string, and
// an async put completed through a std::promise. Two nodes on 127.0.0.1.
//
//   ./raii [data-dir]      (default: a new directory under /tmp)
#include <murmur.h>

#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <future>
#include <iostream>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace murmur {

struct Error : std::runtime_error {
    MurmurStatus status;
    Error(MurmurStatus s, const std::string &what)
        : std::runtime_error(what + ": " + murmur_status_name(s) + ": " + murmur_last_error_message()),
          status(s) {}
};

inline void check(MurmurStatus s, const char *what) {
    if (s != MURMUR_OK) throw Error(s, what);
}

// A string allocated by the library, copied and freed.
inline std::string take(char *s) {
    std::unique_ptr<char, decltype(&murmur_string_free)> owned(s, murmur_string_free);
    return s ? std::string(s) : std::string();
}

struct ConfigDeleter {
    void operator()(MurmurConfig *c) const { murmur_config_free(c); }
};
struct SwarmDeleter {
    // Shut down (if not done yet) and release; errors are ignored in a destructor.
    void operator()(MurmurSwarm *s) const {
        murmur_shutdown(s);
        murmur_free(s);
    }
};

class Config {
    std::unique_ptr<MurmurConfig, ConfigDeleter> h_{murmur_config_new()};

  public:
    Config() {
        if (!h_) throw std::bad_alloc();
    }
    Config &storage_path(const std::string &p) { check(murmur_config_set_storage_path(h_.get(), p.c_str()), "storage_path"); return *this; }
    Config &swarm_name(const std::string &n) { check(murmur_config_set_swarm_name(h_.get(), n.c_str()), "swarm_name"); return *this; }
    Config &bootstrap(const std::string &t) { check(murmur_config_add_bootstrap(h_.get(), t.c_str()), "bootstrap"); return *this; }
    Config &bind_addr(const std::string &a) { check(murmur_config_set_bind_addr(h_.get(), a.c_str()), "bind_addr"); return *this; }
    Config &relays(MurmurRelayMode m) { check(murmur_config_set_relay_mode(h_.get(), m, nullptr), "relay_mode"); return *this; }
    Config &local_discovery(bool on) { check(murmur_config_set_local_discovery(h_.get(), on), "local_discovery"); return *this; }
    Config &timing(uint64_t heartbeat_ms, uint64_t leader_timeout_ms) {
        check(murmur_config_set_heartbeat_ms(h_.get(), heartbeat_ms), "heartbeat");
        check(murmur_config_set_leader_timeout_ms(h_.get(), leader_timeout_ms), "leader_timeout");
        return *this;
    }
    const MurmurConfig *get() const { return h_.get(); }
};

class Swarm {
    std::unique_ptr<MurmurSwarm, SwarmDeleter> h_;

  public:
    explicit Swarm(const Config &c) {
        MurmurSwarm *s = nullptr;
        check(murmur_open(c.get(), &s), "open");
        h_.reset(s);
    }
    void start() { check(murmur_start(h_.get()), "start"); }
    void put(const std::string &k, const std::string &v) {
        check(murmur_put(h_.get(), k.c_str(), reinterpret_cast<const uint8_t *>(v.data()), v.size()), "put");
    }
    // put without blocking; the future completes on a library thread.
    std::future<MurmurStatus> put_async(const std::string &k, const std::string &v) {
        auto *p = new std::promise<MurmurStatus>();
        auto f = p->get_future();
        auto cb = [](void *ud, MurmurStatus st) {
            std::unique_ptr<std::promise<MurmurStatus>> owned(static_cast<std::promise<MurmurStatus> *>(ud));
            owned->set_value(st);
        };
        MurmurStatus s = murmur_put_async(h_.get(), k.c_str(), reinterpret_cast<const uint8_t *>(v.data()), v.size(), cb, p);
        if (s != MURMUR_OK) {
            delete p;  // the callback will not run
            throw Error(s, "put_async");
        }
        return f;
    }
    std::optional<std::string> get(const std::string &k) const {
        MurmurBytes v{};
        bool found = false;
        check(murmur_get(h_.get(), k.c_str(), &v, &found), "get");
        std::unique_ptr<MurmurBytes, void (*)(MurmurBytes *)> guard(&v, [](MurmurBytes *b) { murmur_bytes_free(*b); });
        if (!found) return std::nullopt;
        return std::string(reinterpret_cast<const char *>(v.ptr), v.len);
    }
    std::string node_id() const { char *s = nullptr; check(murmur_node_id(h_.get(), &s), "node_id"); return take(s); }
    std::string ticket() const { char *s = nullptr; check(murmur_ticket(h_.get(), &s), "ticket"); return take(s); }
    std::optional<std::string> leader() const {
        char *s = nullptr;
        check(murmur_leader_id(h_.get(), &s), "leader_id");
        if (!s) return std::nullopt;
        return take(s);
    }
    void shutdown() { check(murmur_shutdown(h_.get()), "shutdown"); }
};

}  // namespace murmur

static bool eventually(const std::function<bool()> &cond) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (!cond()) {
        if (std::chrono::steady_clock::now() > deadline) return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return true;
}

int main(int argc, char **argv) {
    std::string base;
    if (argc > 1) {
        base = argv[1];
    } else {
        char tmpl[] = "/tmp/murmur-raii-XXXXXX";
        if (!mkdtemp(tmpl)) return 1;
        base = tmpl;
    }
    try {
        auto config = [&](const std::string &name) {
            murmur::Config c;
            c.storage_path(base + "/" + name).swarm_name("raii-cpp").bind_addr("127.0.0.1:0")
                .relays(MURMUR_RELAY_DISABLED).local_discovery(false).timing(100, 500);
            return c;
        };
        murmur::Swarm a(config("a"));
        a.start();
        murmur::Config cb = config("b");
        cb.bootstrap(a.ticket());
        murmur::Swarm b(cb);
        b.start();

        a.put("greeting", "hello from C++");
        if (!eventually([&] { return b.get("greeting") == std::optional<std::string>("hello from C++"); }))
            throw std::runtime_error("greeting did not replicate");
        std::cout << "replicated: greeting = " << *b.get("greeting") << "\n";

        auto done = b.put_async("answer", "42");
        if (done.wait_for(std::chrono::seconds(30)) != std::future_status::ready || done.get() != MURMUR_OK)
            throw std::runtime_error("put_async failed");
        if (!eventually([&] { return a.get("answer") == std::optional<std::string>("42"); }))
            throw std::runtime_error("answer did not replicate");
        std::cout << "async put replicated: answer = " << *a.get("answer") << "\n";

        std::string expected = std::max(a.node_id(), b.node_id());
        if (!eventually([&] { return a.leader() == expected && b.leader() == expected; }))
            throw std::runtime_error("no agreement on the leader");
        std::cout << "leader agreed: " << (expected == a.node_id() ? "a" : "b") << "\n";

        try {
            a.put("", "x");
            throw std::runtime_error("empty key accepted");
        } catch (const murmur::Error &e) {
            std::cout << "error as exception: " << murmur_status_name(e.status) << "\n";
        }
        b.shutdown();  // explicit; a is shut down by its destructor
    } catch (const std::exception &e) {
        std::cerr << "error: " << e.what() << "\n";
        return 1;
    }
    std::cout << "raii ok\n";
    return 0;
}
