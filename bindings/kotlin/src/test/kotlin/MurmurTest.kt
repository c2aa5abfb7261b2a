// The Kotlin binding end to end, on the JVM: two or three nodes in one process on 127.0.0.1,
// relays and LAN discovery off, short election timings, temporary directories, and waiting on
// conditions with deadlines. Mirrors bindings/python/tests/test_murmur.py.
//
// A self-contained runner (no JUnit on this machine): each test is a function; main() runs them
// all, prints "N passed, M failed" and exits non-zero on any failure.

import java.nio.file.Files
import java.nio.file.Path
import java.util.Collections
import kotlinx.coroutines.async
import kotlinx.coroutines.awaitAll
import kotlinx.coroutines.delay
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import uniffi.murmur.*

const val HEARTBEAT_MS = 100UL
const val LEADER_TIMEOUT_MS = 500UL
const val DEADLINE_MS = 30_000L

class TestFailure(message: String) : Exception(message)

fun check(cond: Boolean, what: () -> String) {
    if (!cond) throw TestFailure(what())
}

inline fun <reified E : Throwable> expectThrows(what: String, block: () -> Unit): E {
    try {
        block()
    } catch (e: Throwable) {
        if (e is E) return e
        throw TestFailure("$what: expected ${E::class.simpleName}, got $e")
    }
    throw TestFailure("$what: expected ${E::class.simpleName}, nothing was thrown")
}

fun waitUntil(what: String, cond: () -> Boolean) {
    val end = System.currentTimeMillis() + DEADLINE_MS
    while (!cond()) {
        if (System.currentTimeMillis() > end) throw TestFailure("timed out after ${DEADLINE_MS} ms waiting for: $what")
        Thread.sleep(20)
    }
}

fun config(path: Path, bootstrap: List<String> = listOf()) = SwarmConfig(
    storagePath = path.toString(),
    swarmName = "murmur-kotlin-tests",
    bootstrap = bootstrap,
    bindAddr = "127.0.0.1:0",
    relayMode = RelayMode.Disabled,
    localDiscovery = false,
    heartbeatIntervalMs = HEARTBEAT_MS,
    leaderTimeoutMs = LEADER_TIMEOUT_MS,
)

/** Opens nodes in a fresh temporary directory and shuts down whatever is still open at the end. */
class Nodes : AutoCloseable {
    val dir: Path = Files.createTempDirectory("murmur-kt")
    private val opened = mutableListOf<Swarm>()
    private var count = 0

    fun nextDir(): Path = dir.resolve("node${++count}")

    fun track(s: Swarm): Swarm = s.also { opened.add(it) }

    fun open(bootstrap: List<String> = listOf(), edit: SwarmConfig.() -> Unit = {}): Swarm {
        val cfg = config(nextDir(), bootstrap).apply(edit)
        return track(Swarm(cfg)).also { it.start() }
    }

    override fun close() {
        for (s in opened) {
            try { s.shutdown() } catch (_: MurmurException.Closed) {}
            s.close() // frees the handle (AutoCloseable)
        }
        dir.toFile().deleteRecursively()
    }
}

// A key listed by keys() may be deleted by replication before get() reads it: skip it then.
fun dump(s: Swarm): Map<String, List<Byte>> =
    s.keys("").mapNotNull { k -> s.get(k)?.let { k to it.toList() } }.toMap()

fun converge(nodes: List<Swarm>): Map<String, List<Byte>> {
    waitUntil("replicas converge") { nodes.drop(1).all { dump(it) == dump(nodes[0]) } }
    return dump(nodes[0])
}

fun agreeOnLeader(nodes: List<Swarm>, expected: String) =
    waitUntil("all nodes agree the leader is $expected") {
        nodes.all { it.leaderId() == expected } && nodes.count { it.isLeader() } == 1
    }

class Recorder : EventListener {
    val events: MutableList<Event> = Collections.synchronizedList(mutableListOf())
    override fun onEvent(event: Event) { events.add(event) }
    fun snapshot(): List<Event> = synchronized(events) { events.toList() }
    fun waitFor(what: String, pred: (Event) -> Boolean) = waitUntil(what) { snapshot().any(pred) }
}

fun bytes(s: String) = s.toByteArray()

// ---- tests -------------------------------------------------------------------------------

fun singleNodePutGetDelete() = Nodes().use { n ->
    val a = n.open()
    check(a.get("missing") == null) { "absent key reads null" }
    a.put("user:1", bytes("Alice"))
    a.put("user:2", bytes("Bob"))
    check(a.get("user:1")!!.contentEquals(bytes("Alice"))) { "get returns the value" }
    check(a.keys("user:") == listOf("user:1", "user:2")) { "keys by prefix" }
    check(a.len() == 2UL && !a.isEmpty()) { "len" }
    a.delete("user:1")
    a.delete("never-existed")
    check(a.get("user:1") == null) { "deleted" }
    a.compact()
    check(a.nodeId().length == 64 && a.ticket().isNotEmpty()) { "node id and ticket" }
}

fun replicationAcrossThreeNodes() = Nodes().use { n ->
    val a = n.open()
    val b = n.open(listOf(a.ticket()))
    val c = n.open(listOf(a.ticket()))
    a.put("from-a", bytes("1"))
    b.put("from-b", bytes("2"))
    c.put("from-c", bytes("3"))
    check(converge(listOf(a, b, c)).keys == setOf("from-a", "from-b", "from-c")) { "all writes replicate" }
    b.delete("from-a")
    c.put("from-c", bytes("33"))
    val map = converge(listOf(a, b, c))
    check(map == mapOf("from-b" to bytes("2").toList(), "from-c" to bytes("33").toList())) { "delete and overwrite replicate: $map" }
}

fun eventsReachListeners() = Nodes().use { n ->
    val a = n.open()
    val recA = Recorder()
    val subA = a.subscribe(recA)
    val b = n.open(listOf(a.ticket()))
    val recB = Recorder()
    val subB = b.subscribe(recB)
    recA.waitFor("PeerUp on a") { it is Event.PeerUp && it.peer == b.nodeId() }
    a.put("k", bytes("v"))
    recB.waitFor("a's put seen by b") {
        it is Event.Put && it.key == "k" && it.value.contentEquals(bytes("v")) && it.origin == a.nodeId()
    }
    b.delete("k")
    recA.waitFor("b's delete seen by a") { it is Event.Deleted && it.key == "k" && it.origin == b.nodeId() }
    val leader = maxOf(a.nodeId(), b.nodeId())
    for (rec in listOf(recA, recB)) {
        rec.waitFor("LeaderChanged to the greatest id") { it is Event.LeaderChanged && it.leader == leader && it.term > 0UL }
    }
    subB.cancel()
    check(subB.isCancelled()) { "cancelled" }
    val seen = recB.snapshot().size
    a.put("after-cancel", bytes("x"))
    waitUntil("b has the value") { b.get("after-cancel")?.contentEquals(bytes("x")) == true }
    recA.waitFor("a's own event") { it is Event.Put && it.key == "after-cancel" }
    check(recB.snapshot().size == seen) { "no event after cancel" }
    b.shutdown()
    recA.waitFor("PeerDown on a") { it is Event.PeerDown && it.peer == b.nodeId() }
    subA.cancel()
    subA.close(); subB.close()
}

fun listenerMayCallBackIntoTheSwarm() = Nodes().use { n ->
    val a = n.open()
    val sub = a.subscribe(object : EventListener {
        override fun onEvent(event: Event) {
            if (event is Event.Put && event.key == "ping") a.put("pong", a.get("ping")!! + bytes("!"))
        }
    })
    a.put("ping", bytes("hi"))
    waitUntil("the listener wrote pong") { a.get("pong")?.contentEquals(bytes("hi!")) == true }
    sub.cancel()
}

fun listenerExceptionDoesNotStopDelivery() = Nodes().use { n ->
    val a = n.open()
    val rec = Recorder()
    val sub = a.subscribe(object : EventListener {
        override fun onEvent(event: Event) {
            rec.onEvent(event)
            throw IllegalStateException("listener bug")
        }
    })
    a.put("one", bytes("1"))
    a.put("two", bytes("2"))
    rec.waitFor("second event after a failing callback") { it is Event.Put && it.key == "two" }
    sub.cancel()
}

fun leaderElectionAndFailover() = Nodes().use { n ->
    val a = n.open()
    val b = n.open(listOf(a.ticket()))
    val c = n.open(listOf(a.ticket()))
    val ordered = listOf(a, b, c).sortedBy { it.nodeId() }
    val highest = ordered[2]
    val second = ordered[1]
    agreeOnLeader(listOf(a, b, c), highest.nodeId())
    check(highest.isLeader()) { "the greatest id leads" }
    val term = highest.leaderTerm()
    check(term > 0UL) { "term is positive" }
    highest.shutdown()
    val rest = listOf(a, b, c).filter { it !== highest }
    agreeOnLeader(rest, second.nodeId())
    check(rest.all { it.leaderTerm() > term }) { "the term increases" }
}

fun peersReportClockOffsets() = Nodes().use { n ->
    val a = n.open()
    val b = n.open(listOf(a.ticket()))
    fun offset(x: Swarm, y: Swarm): Long? = x.peers().firstOrNull { it.id == y.nodeId() && it.connected }?.clockOffsetMs
    waitUntil("clock offsets measured") { offset(a, b) != null && offset(b, a) != null }
    // One machine, one clock: the measured offsets are small.
    val ab = offset(a, b)!!
    val ba = offset(b, a)!!
    check(Math.abs(ab) < 1000 && Math.abs(ba) < 1000) { "offsets $ab, $ba" }
}

fun errorsAreTypedWithMessages() = Nodes().use { n ->
    val a = n.open { maxValueSize = 16UL }
    val e = expectThrows<MurmurException.InvalidKey>("empty key") { a.put("", bytes("x")) }
    check(e.message!!.contains("invalid key")) { "message: ${e.message}" }
    val big = expectThrows<MurmurException.ValueTooLarge>("large value") { a.put("big", ByteArray(17)) }
    check(big.message!!.contains("17 bytes exceeds the limit of 16")) { "message: ${big.message}" }
    expectThrows<MurmurException.Locked>("directory in use") { Swarm(config(n.dir.resolve("node1"))) }
    expectThrows<MurmurException.InvalidTicket>("bad ticket") { Swarm(config(n.nextDir(), listOf("not a ticket"))) }
    expectThrows<MurmurException.Config>("bad timing") {
        Swarm(config(n.nextDir()).apply { heartbeatIntervalMs = 500UL; leaderTimeoutMs = 500UL })
    }
    expectThrows<MurmurException.Config>("short key") {
        Swarm(config(n.nextDir()).apply { swarmName = null; swarmKey = ByteArray(5) })
    }
    expectThrows<MurmurException.Config>("zero clock offset bound") {
        Swarm(config(n.nextDir()).apply { maxClockOffsetMs = 0UL })
    }
    // A write refused for a skewed clock has its own exception (the skew itself is tested in
    // Rust, tests/replication.rs).
    val skew: MurmurException = MurmurException.ClockSkew("clock")
    check(skew is MurmurException.ClockSkew) { "ClockSkew exists" }
    a.shutdown()
    val closed = expectThrows<MurmurException.Closed>("after shutdown") { a.get("k") }
    check(closed.message!!.contains("shut down")) { "message: ${closed.message}" }
    expectThrows<MurmurException.Closed>("put after shutdown") { a.put("k", bytes("v")) }
    expectThrows<MurmurException.Closed>("second shutdown") { a.shutdown() }
}

fun coroutinesApi() = Nodes().use { n ->
    runBlocking {
        val a = n.track(Swarm.openAsync(config(n.nextDir()).apply { durability = Durability.PROCESS }))
        a.startAsync()
        val b = n.track(Swarm.openAsync(config(n.nextDir(), listOf(a.ticket()))))
        b.startAsync()
        (0 until 20).map { i -> async { a.putAsync("k%02d".format(i), bytes("$i")) } }.awaitAll()
        check(a.getAsync("k07")!!.contentEquals(bytes("7"))) { "getAsync" }
        check(a.keysAsync("k").size == 20) { "keysAsync" }
        withTimeout(DEADLINE_MS) { while (b.getAsync("k19")?.contentEquals(bytes("19")) != true) delay(20) }
        b.deleteAsync("k19")
        withTimeout(DEADLINE_MS) { while (a.getAsync("k19") != null) delay(20) }
        expectThrows<MurmurException.InvalidKey>("async error") { runBlocking { a.putAsync("", bytes("x")) } }
        b.shutdownAsync()
        a.shutdownAsync()
        expectThrows<MurmurException.Closed>("async after shutdown") { runBlocking { a.getAsync("k00") } }
    }
}

fun everyCallAfterShutdownThrowsClosed() = Nodes().use { n ->
    val a = n.open()
    val id = a.nodeId()
    val sub = a.subscribe(Recorder())
    a.shutdown()
    val blocking: Map<String, () -> Unit> = mapOf(
        "start" to { a.start() },
        "put" to { a.put("k", bytes("v")) },
        "get" to { a.get("k") },
        "delete" to { a.delete("k") },
        "keys" to { a.keys("") },
        "len" to { a.len() },
        "isEmpty" to { a.isEmpty() },
        "isLeader" to { a.isLeader() },
        "leaderId" to { a.leaderId() },
        "leaderTerm" to { a.leaderTerm() },
        "ticket" to { a.ticket() },
        "peers" to { a.peers() },
        "compact" to { a.compact() },
        "subscribe" to { a.subscribe(Recorder()) },
        "shutdown" to { a.shutdown() },
        "startAsync" to { runBlocking { a.startAsync() } },
        "putAsync" to { runBlocking { a.putAsync("k", bytes("v")) } },
        "getAsync" to { runBlocking { a.getAsync("k") } },
        "deleteAsync" to { runBlocking { a.deleteAsync("k") } },
        "keysAsync" to { runBlocking { a.keysAsync("") } },
        "shutdownAsync" to { runBlocking { a.shutdownAsync() } },
    )
    for ((name, call) in blocking) {
        val e = expectThrows<MurmurException.Closed>("$name after shutdown") { call() }
        check(e.message!!.contains("shut down")) { "$name: message ${e.message}" }
    }
    // nodeId() cannot throw: it still returns the node's identity
    check(a.nodeId() == id) { "nodeId after shutdown" }
    sub.cancel()
    sub.cancel()
    check(sub.isCancelled()) { "cancelled" }
}

fun configDefaultsMatchTheRustBuilder() {
    val cfg = SwarmConfig(storagePath = "/tmp/x")
    check(cfg == defaultConfig("/tmp/x")) { "defaults agree: $cfg" }
    check(cfg.heartbeatIntervalMs == 2000UL && cfg.leaderTimeoutMs == 5000UL && cfg.maxPeers == 64U) { "values" }
    check(cfg.maxClockOffsetMs == 60_000UL) { "clock bound" }
}

/**
 * Another program holding the write lock of a database (as a backup tool or an `sqlite3` shell
 * does) until closed: Python's sqlite3 module in a child process (the JVM has no SQLite here).
 */
class WriteLock(db: Path) : AutoCloseable {
    private val holder = ProcessBuilder(
        "python3", "-c",
        "import sqlite3, sys\n" +
            "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n" +
            "c.execute('BEGIN IMMEDIATE')\n" +
            "print('locked', flush=True)\n" +
            "sys.stdin.read()\n" +
            "c.execute('ROLLBACK')\n",
        db.toString(),
    ).redirectErrorStream(true).start()

    init {
        val line = holder.inputStream.bufferedReader().readLine()
        check(line == "locked") { "the lock holder said: $line" }
    }

    override fun close() {
        holder.outputStream.close()
        holder.waitFor()
    }
}

fun storageFailureAndRecoveryAreEvents() = Nodes().use { n ->
    val a = n.open()
    val rec = Recorder()
    val sub = a.subscribe(rec)
    WriteLock(n.dir.resolve("node1").resolve("murmur.sqlite3")).use {
        val e = expectThrows<MurmurException.Storage>("a put while the database is locked") { a.put("k", bytes("v")) }
        check(e.message?.contains("locked") == true) { "message: ${e.message}" }
        rec.waitFor("StorageFailed") { it is Event.StorageFailed }
    }
    a.put("k", bytes("v2"))
    rec.waitFor("StorageRecovered") { it is Event.StorageRecovered }
    val storage = rec.snapshot().filter { it is Event.StorageFailed || it is Event.StorageRecovered }
    check(storage.size == 2 && (storage[0] as Event.StorageFailed).error.contains("locked")) { "$storage" }
    check(a.get("k")?.contentEquals(bytes("v2")) == true) { "the later write" }
    sub.cancel()
}

fun main() {
    val tests = listOf(
        "single node put/get/delete" to ::singleNodePutGetDelete,
        "replication across three nodes" to ::replicationAcrossThreeNodes,
        "events reach listeners" to ::eventsReachListeners,
        "listener may call back into the swarm" to ::listenerMayCallBackIntoTheSwarm,
        "listener exception does not stop delivery" to ::listenerExceptionDoesNotStopDelivery,
        "leader election and failover" to ::leaderElectionAndFailover,
        "peers report clock offsets" to ::peersReportClockOffsets,
        "errors are typed, with messages" to ::errorsAreTypedWithMessages,
        "coroutines (suspend) API" to ::coroutinesApi,
        "config defaults match the Rust builder" to ::configDefaultsMatchTheRustBuilder,
        "every call after shutdown throws Closed" to ::everyCallAfterShutdownThrowsClosed,
        "storage failure and recovery are events" to ::storageFailureAndRecoveryAreEvents,
    )
    var passed = 0
    var failed = 0
    for ((name, test) in tests) {
        val start = System.currentTimeMillis()
        try {
            test()
            passed++
            println("PASS $name (${System.currentTimeMillis() - start} ms)")
        } catch (e: Throwable) {
            failed++
            println("FAIL $name: $e")
            e.printStackTrace()
        }
    }
    println("kotlin: $passed passed, $failed failed")
    System.exit(if (failed == 0) 0 else 1)
}
