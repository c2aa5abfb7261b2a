// One way of ending a JVM that uses Murmur, run as a child process by scripts/test-bindings.sh:
// `java ... murmur.exit.ExitScenariosKt <scenario> <data-dir>` (no arguments: list the
// scenarios). Each ends the JVM in an awkward order; the script asserts exit code 0 (no crash,
// no hang) across many runs.
package murmur.exit

import java.util.concurrent.CountDownLatch
import java.util.concurrent.TimeUnit
import kotlin.system.exitProcess
import uniffi.murmur.*

fun config(dir: String, bootstrap: List<String> = listOf()) = SwarmConfig(
    storagePath = dir,
    swarmName = "murmur-kotlin-exit-tests",
    bootstrap = bootstrap,
    bindAddr = "127.0.0.1:0",
    relayMode = RelayMode.Disabled,
    localDiscovery = false,
    heartbeatIntervalMs = 50UL,
    leaderTimeoutMs = 200UL,
)

class Listener(val action: (Event) -> Unit = {}) : EventListener {
    val seen = CountDownLatch(1)
    override fun onEvent(event: Event) {
        seen.countDown()
        action(event)
    }
}

fun open(dir: String): Swarm = Swarm(config(dir)).also { it.start() }

fun await(latch: CountDownLatch) {
    if (!latch.await(30, TimeUnit.SECONDS)) {
        System.err.println("no event within 30 s")
        exitProcess(2)
    }
}

val scenarios: Map<String, (String) -> Unit> = mapOf(
    // main returns with live listeners and events still flowing, no shutdown
    "live_listeners_no_shutdown" to { d ->
        val s = open(d)
        val l = Listener()
        s.subscribe(l)
        s.subscribe(Listener())
        repeat(20) { s.put("k$it", "v".toByteArray()) }
        await(l.seen)
    },
    // System.exit from inside a listener
    "system_exit_from_listener" to { d ->
        val s = open(d)
        s.subscribe(Listener())
        s.subscribe(Listener { if (it is Event.Put) exitProcess(0) })
        s.put("k", "v".toByteArray())
        Thread.sleep(60_000) // the listener ends the JVM
        exitProcess(3)
    },
    "listener_throws" to { d ->
        val s = open(d)
        val l = Listener { throw IllegalStateException("listener bug at exit") }
        s.subscribe(l)
        repeat(10) { s.put("k$it", "v".toByteArray()) }
        await(l.seen)
    },
    "shutdown_from_listener" to { d ->
        val s = open(d)
        val done = CountDownLatch(1)
        s.subscribe(Listener {
            if (it is Event.Put) {
                try { s.shutdown() } catch (_: MurmurException.Closed) {}
                done.countDown()
            }
        })
        s.put("k", "v".toByteArray())
        await(done)
    },
    // System.exit from main while another thread is inside put()
    "exit_while_write_in_flight" to { d ->
        val s = open(d)
        val l = Listener()
        s.subscribe(l)
        val t = Thread {
            var i = 0
            try { while (true) s.put("k${i++}", ByteArray(1000)) } catch (_: MurmurException.Closed) {}
        }
        t.isDaemon = true
        t.start()
        await(l.seen)
        exitProcess(0)
    },
    "shutdown_then_subscribe_cancel" to { d ->
        val s = open(d)
        s.shutdown()
        try { s.subscribe(Listener()).cancel() } catch (_: MurmurException.Closed) {}
    },
)

fun main(args: Array<String>) {
    if (args.size < 2) {
        scenarios.keys.forEach(::println)
        return
    }
    val run = scenarios[args[0]] ?: run { System.err.println("unknown scenario ${args[0]}"); exitProcess(2) }
    run(args[1])
}
