// The Swift binding end to end: two or three nodes in one process on 127.0.0.1, relays and LAN
// discovery off, short election timings, temporary directories, and waiting on conditions with
// deadlines. Mirrors bindings/python/tests/test_murmur.py.
//
// Not compiled on the machine that generated it (no Swift toolchain there): it is parsed only.
// Run it with `swift test` on macOS or Linux after `cargo build --release` (see README.md).

import Foundation
import XCTest

@testable import Murmur

let heartbeatMs: UInt64 = 100
let leaderTimeoutMs: UInt64 = 500
let deadline: TimeInterval = 30

struct Timeout: Error, CustomStringConvertible {
    let description: String
}

func waitUntil(_ what: String, _ cond: () throws -> Bool) throws {
    let end = Date().addingTimeInterval(deadline)
    while try !cond() {
        if Date() > end { throw Timeout(description: "timed out after \(deadline) s waiting for: \(what)") }
        Thread.sleep(forTimeInterval: 0.02)
    }
}

func config(_ path: URL, bootstrap: [String] = []) -> SwarmConfig {
    SwarmConfig(
        storagePath: path.path,
        swarmName: "murmur-swift-tests",
        bootstrap: bootstrap,
        bindAddr: "127.0.0.1:0",
        relayMode: .disabled,
        localDiscovery: false,
        heartbeatIntervalMs: heartbeatMs,
        leaderTimeoutMs: leaderTimeoutMs
    )
}

func bytes(_ s: String) -> Data { Data(s.utf8) }

func dump(_ s: Swarm) throws -> [String: Data] {
    var out: [String: Data] = [:]
    for k in try s.keys(prefix: "") { out[k] = try s.get(key: k) }
    return out
}

func converge(_ nodes: [Swarm]) throws -> [String: Data] {
    try waitUntil("replicas converge") {
        let first = try dump(nodes[0])
        return try nodes.dropFirst().allSatisfy { try dump($0) == first }
    }
    return try dump(nodes[0])
}

func agreeOnLeader(_ nodes: [Swarm], _ expected: String) throws {
    try waitUntil("all nodes agree the leader is \(expected)") {
        try nodes.allSatisfy { try $0.leaderId() == expected }
            && nodes.filter { (try? $0.isLeader()) == true }.count == 1
    }
}

final class Recorder: EventListener, @unchecked Sendable {
    private let lock = NSLock()
    private var events: [Event] = []

    func onEvent(event: Event) {
        lock.lock()
        events.append(event)
        lock.unlock()
    }

    func snapshot() -> [Event] {
        lock.lock()
        defer { lock.unlock() }
        return events
    }

    func waitFor(_ what: String, _ pred: @escaping (Event) -> Bool) throws {
        try waitUntil(what) { self.snapshot().contains(where: pred) }
    }
}

struct ListenerBug: Error {}

/// Records every event, then throws: delivery must go on.
final class Failing: EventListener, @unchecked Sendable {
    let rec = Recorder()

    func onEvent(event: Event) throws {
        rec.onEvent(event: event)
        throw ListenerBug()
    }
}

final class MurmurTests: XCTestCase {
    var dir: URL!
    var opened: [Swarm] = []
    var count = 0

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("murmur-swift-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        for s in opened {
            do { try s.shutdown() } catch MurmurError.Closed { }
        }
        opened = []
        try? FileManager.default.removeItem(at: dir)
    }

    func nextDir() -> URL {
        count += 1
        return dir.appendingPathComponent("node\(count)")
    }

    func open(bootstrap: [String] = [], _ edit: (inout SwarmConfig) -> Void = { _ in }) throws -> Swarm {
        var cfg = config(nextDir(), bootstrap: bootstrap)
        edit(&cfg)
        let s = try Swarm(config: cfg)
        opened.append(s)
        try s.start()
        return s
    }

    func testSingleNodePutGetDelete() throws {
        let a = try open()
        XCTAssertNil(try a.get(key: "missing"))
        try a.put(key: "user:1", value: bytes("Alice"))
        try a.put(key: "user:2", value: bytes("Bob"))
        XCTAssertEqual(try a.get(key: "user:1"), bytes("Alice"))
        XCTAssertEqual(try a.keys(prefix: "user:"), ["user:1", "user:2"])
        XCTAssertEqual(try a.len(), 2)
        try a.delete(key: "user:1")
        try a.delete(key: "never-existed")
        XCTAssertNil(try a.get(key: "user:1"))
        try a.compact()
        XCTAssertEqual(a.nodeId().count, 64)
        XCTAssertFalse(try a.ticket().isEmpty)
    }

    func testReplicationAcrossThreeNodes() throws {
        let a = try open()
        let b = try open(bootstrap: [a.ticket()])
        let c = try open(bootstrap: [a.ticket()])
        try a.put(key: "from-a", value: bytes("1"))
        try b.put(key: "from-b", value: bytes("2"))
        try c.put(key: "from-c", value: bytes("3"))
        XCTAssertEqual(Set(try converge([a, b, c]).keys), ["from-a", "from-b", "from-c"])
        try b.delete(key: "from-a")
        try c.put(key: "from-c", value: bytes("33"))
        XCTAssertEqual(try converge([a, b, c]), ["from-b": bytes("2"), "from-c": bytes("33")])
    }

    func testEventsReachListeners() throws {
        let a = try open()
        let recA = Recorder()
        let subA = try a.subscribe(listener: recA)
        let b = try open(bootstrap: [a.ticket()])
        let recB = Recorder()
        let subB = try b.subscribe(listener: recB)
        let aId = a.nodeId()
        let bId = b.nodeId()
        try recA.waitFor("PeerUp on a") { $0 == .peerUp(peer: bId) }
        try a.put(key: "k", value: bytes("v"))
        try recB.waitFor("a's put seen by b") { $0 == .put(key: "k", value: bytes("v"), origin: aId) }
        try b.delete(key: "k")
        try recA.waitFor("b's delete seen by a") { $0 == .deleted(key: "k", origin: bId) }
        let leader = max(aId, bId)
        for rec in [recA, recB] {
            try rec.waitFor("LeaderChanged to the greatest id") {
                if case let .leaderChanged(l, term) = $0 { return l == leader && term > 0 }
                return false
            }
        }
        subB.cancel()
        XCTAssertTrue(subB.isCancelled())
        let seen = recB.snapshot().count
        try a.put(key: "after-cancel", value: bytes("x"))
        try waitUntil("b has the value") { try b.get(key: "after-cancel") == bytes("x") }
        try recA.waitFor("a's own event") {
            if case let .put(key, _, _) = $0 { return key == "after-cancel" }
            return false
        }
        XCTAssertEqual(recB.snapshot().count, seen)
        try b.shutdown()
        try recA.waitFor("PeerDown on a") { $0 == .peerDown(peer: bId) }
        subA.cancel()
    }

    func testListenerErrorDoesNotStopDelivery() throws {
        let a = try open()
        let failing = Failing()
        let sub = try a.subscribe(listener: failing)
        try a.put(key: "one", value: bytes("1"))
        try a.put(key: "two", value: bytes("2"))
        try failing.rec.waitFor("second event after a failing callback") {
            if case let .put(key, _, _) = $0 { return key == "two" }
            return false
        }
        sub.cancel()
    }

    func testLeaderElectionAndFailover() throws {
        let a = try open()
        let b = try open(bootstrap: [a.ticket()])
        let c = try open(bootstrap: [a.ticket()])
        let ordered = [a, b, c].sorted { $0.nodeId() < $1.nodeId() }
        let highest = ordered[2]
        let second = ordered[1]
        try agreeOnLeader([a, b, c], highest.nodeId())
        XCTAssertTrue(try highest.isLeader())
        let term = try highest.leaderTerm()
        XCTAssertGreaterThan(term, 0)
        try highest.shutdown()
        let rest = [a, b, c].filter { $0 !== highest }
        try agreeOnLeader(rest, second.nodeId())
        for n in rest { XCTAssertGreaterThan(try n.leaderTerm(), term) }
    }

    func testPeersReportClockOffsets() throws {
        let a = try open()
        let b = try open(bootstrap: [a.ticket()])
        func offset(_ x: Swarm, _ y: Swarm) throws -> Int64? {
            try x.peers().first { $0.id == y.nodeId() && $0.connected }?.clockOffsetMs
        }
        try waitUntil("clock offsets measured") { try offset(a, b) != nil && offset(b, a) != nil }
        // One machine, one clock: the measured offsets are small.
        XCTAssertLessThan(abs(try offset(a, b)!), 1000)
        XCTAssertLessThan(abs(try offset(b, a)!), 1000)
    }

    func testErrorsAreTypedWithMessages() throws {
        let a = try open { $0.maxValueSize = 16 }
        XCTAssertThrowsError(try a.put(key: "", value: bytes("x"))) { e in
            guard case let .InvalidKey(message)? = e as? MurmurError else { return XCTFail("\(e)") }
            XCTAssertTrue(message.contains("invalid key"))
        }
        XCTAssertThrowsError(try a.put(key: "big", value: Data(count: 17))) { e in
            guard case let .ValueTooLarge(message)? = e as? MurmurError else { return XCTFail("\(e)") }
            XCTAssertTrue(message.contains("17 bytes exceeds the limit of 16"))
        }
        XCTAssertThrowsError(try Swarm(config: config(dir.appendingPathComponent("node1")))) { e in
            guard case .Locked? = e as? MurmurError else { return XCTFail("\(e)") }
        }
        XCTAssertThrowsError(try Swarm(config: config(nextDir(), bootstrap: ["not a ticket"]))) { e in
            guard case .InvalidTicket? = e as? MurmurError else { return XCTFail("\(e)") }
        }
        var bad = config(nextDir())
        bad.heartbeatIntervalMs = 500
        bad.leaderTimeoutMs = 500
        XCTAssertThrowsError(try Swarm(config: bad)) { e in
            guard case .Config? = e as? MurmurError else { return XCTFail("\(e)") }
        }
        var unbounded = config(nextDir())
        unbounded.maxClockOffsetMs = 0
        XCTAssertThrowsError(try Swarm(config: unbounded)) { e in
            guard case .Config? = e as? MurmurError else { return XCTFail("\(e)") }
        }
        // A write refused for a skewed clock has its own case (the skew itself is tested in
        // Rust, tests/replication.rs).
        let skew: MurmurError = .ClockSkew(message: "clock")
        guard case .ClockSkew = skew else { return XCTFail("ClockSkew") }
        try a.shutdown()
        XCTAssertThrowsError(try a.get(key: "k")) { e in
            guard case let .Closed(message)? = e as? MurmurError else { return XCTFail("\(e)") }
            XCTAssertTrue(message.contains("shut down"))
        }
    }

    func testAsyncApi() async throws {
        var cfgA = config(nextDir())
        cfgA.durability = .process
        let a = try await Swarm.openAsync(config: cfgA)
        opened.append(a)
        try await a.startAsync()
        let b = try await Swarm.openAsync(config: config(nextDir(), bootstrap: [a.ticket()]))
        opened.append(b)
        try await b.startAsync()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for i in 0..<20 {
                group.addTask { try await a.putAsync(key: String(format: "k%02d", i), value: bytes("\(i)")) }
            }
            try await group.waitForAll()
        }
        let seven = try await a.getAsync(key: "k07")
        XCTAssertEqual(seven, bytes("7"))
        let keys = try await a.keysAsync(prefix: "k")
        XCTAssertEqual(keys.count, 20)
        let end = Date().addingTimeInterval(deadline)
        while try await b.getAsync(key: "k19") != bytes("19") {
            if Date() > end { throw Timeout(description: "k19 did not replicate") }
            try await Task.sleep(nanoseconds: 20_000_000)
        }
        try await b.deleteAsync(key: "k19")
        while try await a.getAsync(key: "k19") != nil {
            if Date() > end { throw Timeout(description: "the delete did not replicate") }
            try await Task.sleep(nanoseconds: 20_000_000)
        }
        try await b.shutdownAsync()
        try await a.shutdownAsync()
        do {
            _ = try await a.getAsync(key: "k00")
            XCTFail("expected Closed")
        } catch MurmurError.Closed {
        }
    }

    /// Every call after shutdown() throws Closed, blocking and async alike; nodeId() cannot
    /// throw and still returns the node's identity.
    func testEveryCallAfterShutdownThrowsClosed() async throws {
        let a = try open()
        let id = a.nodeId()
        let sub = try a.subscribe(listener: Recorder())
        try a.shutdown()
        let blocking: [(String, () throws -> Void)] = [
            ("start", { try a.start() }),
            ("put", { try a.put(key: "k", value: bytes("v")) }),
            ("get", { _ = try a.get(key: "k") }),
            ("delete", { try a.delete(key: "k") }),
            ("keys", { _ = try a.keys(prefix: "") }),
            ("len", { _ = try a.len() }),
            ("isEmpty", { _ = try a.isEmpty() }),
            ("isLeader", { _ = try a.isLeader() }),
            ("leaderId", { _ = try a.leaderId() }),
            ("leaderTerm", { _ = try a.leaderTerm() }),
            ("ticket", { _ = try a.ticket() }),
            ("peers", { _ = try a.peers() }),
            ("compact", { try a.compact() }),
            ("subscribe", { _ = try a.subscribe(listener: Recorder()) }),
            ("shutdown", { try a.shutdown() }),
        ]
        for (name, call) in blocking {
            XCTAssertThrowsError(try call(), name) { e in
                guard case let .Closed(message)? = e as? MurmurError else { return XCTFail("\(name): \(e)") }
                XCTAssertTrue(message.contains("shut down"), name)
            }
        }
        let asynchronous: [(String, () async throws -> Void)] = [
            ("startAsync", { try await a.startAsync() }),
            ("putAsync", { try await a.putAsync(key: "k", value: bytes("v")) }),
            ("getAsync", { _ = try await a.getAsync(key: "k") }),
            ("deleteAsync", { try await a.deleteAsync(key: "k") }),
            ("keysAsync", { _ = try await a.keysAsync(prefix: "") }),
            ("shutdownAsync", { try await a.shutdownAsync() }),
        ]
        for (name, call) in asynchronous {
            do {
                try await call()
                XCTFail("\(name): expected Closed")
            } catch MurmurError.Closed {
            }
        }
        XCTAssertEqual(a.nodeId(), id)
        sub.cancel()
        sub.cancel()
        XCTAssertTrue(sub.isCancelled())
    }

    /// A commit that fails (another program holds the database's write lock past the busy
    /// timeout: here Python's sqlite3 module in a child process) throws `Storage`, and listeners
    /// hear `storageFailed` once, then `storageRecovered` at the next commit that works.
    func testStorageFailureAndRecoveryAreEvents() throws {
        let a = try open()
        let rec = Recorder()
        let sub = try a.subscribe(listener: rec)
        let holder = Process()
        holder.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        holder.arguments = ["python3", "-c",
            "import sqlite3, sys\nc = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
                + "c.execute('BEGIN IMMEDIATE')\nprint('locked', flush=True)\nsys.stdin.read()\n",
            dir.appendingPathComponent("node\(count)/murmur.sqlite3").path]
        let toHolder = Pipe(), fromHolder = Pipe()
        holder.standardInput = toHolder
        holder.standardOutput = fromHolder
        try holder.run()
        _ = fromHolder.fileHandleForReading.availableData // "locked"
        XCTAssertThrowsError(try a.put(key: "k", value: bytes("v"))) { e in
            guard case let .Storage(message)? = e as? MurmurError else { return XCTFail("\(e)") }
            XCTAssertTrue(message.contains("locked"), message)
        }
        try rec.waitFor("storageFailed") { if case .storageFailed = $0 { return true }; return false }
        try toHolder.fileHandleForWriting.close()
        holder.waitUntilExit()
        try a.put(key: "k", value: bytes("v2"))
        try rec.waitFor("storageRecovered") { if case .storageRecovered = $0 { return true }; return false }
        let storage = rec.snapshot().filter {
            switch $0 {
            case .storageFailed, .storageRecovered: return true
            default: return false
            }
        }
        XCTAssertEqual(storage.count, 2)
        if case let .storageFailed(error) = storage[0] { XCTAssertTrue(error.contains("locked")) } else { XCTFail("\(storage)") }
        sub.cancel()
    }

    func testConfigDefaultsMatchTheRustBuilder() {
        let cfg = SwarmConfig(storagePath: "/tmp/x")
        XCTAssertEqual(cfg, defaultConfig(storagePath: "/tmp/x"))
        XCTAssertEqual(cfg.heartbeatIntervalMs, 2000)
        XCTAssertEqual(cfg.leaderTimeoutMs, 5000)
        XCTAssertEqual(cfg.maxClockOffsetMs, 60000)
    }
}
