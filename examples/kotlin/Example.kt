// Two Murmur nodes in one JVM, from Kotlin: replication, events, leader, coroutines.
// Runs offline (127.0.0.1, relays and LAN discovery off). Built and run by
// scripts/test-bindings.sh; see "Using from Kotlin" in README.md for the commands.
package murmur.example

import java.nio.file.Files
import java.util.concurrent.CountDownLatch
import java.util.concurrent.TimeUnit
import kotlinx.coroutines.runBlocking
import uniffi.murmur.*

fun config(path: String, bootstrap: List<String> = listOf()) = SwarmConfig(
    storagePath = path,
    bootstrap = bootstrap,
    bindAddr = "127.0.0.1:0",
    relayMode = RelayMode.Disabled,
    localDiscovery = false,
    heartbeatIntervalMs = 100UL,
    leaderTimeoutMs = 500UL,
)

fun main() {
    val tmp = Files.createTempDirectory("murmur-example").toFile()
    try {
        Swarm(config("$tmp/a")).use { a ->
            a.start()
            Swarm(config("$tmp/b", listOf(a.ticket()))).use { b ->
                b.start()
                val replicated = CountDownLatch(1)
                val subscription = b.subscribe(object : EventListener {
                    override fun onEvent(event: Event) {
                        println("  [b] $event")
                        if (event is Event.Put && event.key == "user:123") replicated.countDown()
                    }
                })

                a.put("user:123", "Alice".toByteArray())
                check(replicated.await(30, TimeUnit.SECONDS)) { "the value did not reach b" }
                println("b reads user:123 = ${b.get("user:123")?.decodeToString()}")

                val end = System.currentTimeMillis() + 30_000
                while (a.leaderId() == null || a.leaderId() != b.leaderId()) {
                    check(System.currentTimeMillis() < end) { "no leader" }
                    Thread.sleep(20)
                }
                println("leader: ${a.leaderId()} ${if (a.isLeader()) "(a leads)" else "(b leads)"}")

                try {
                    a.put("", "x".toByteArray())
                } catch (e: MurmurException.InvalidKey) {
                    println("refused: ${e.message}")
                }

                val greeting = runBlocking {
                    b.putAsync("greeting", "hello from a coroutine".toByteArray())
                    b.getAsync("greeting")?.decodeToString()
                }
                println("coroutines: $greeting")
                subscription.cancel()
                subscription.close()
                b.shutdown()
            }
            a.shutdown()
        }
        println("done")
    } finally {
        tmp.deleteRecursively()
    }
}
