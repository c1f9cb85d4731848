// SPDX-License-Identifier: Apache-2.0
import Foundation
import HMXCore
import HMXEmulator
import HMXProcessTestSupport
import NIOCore
import Testing

/// A hmx-emulator process against domain processes that misbehave on purpose (the test
/// process speaks the attach protocol by hand): each costs only its own domain.
@Suite("hmx-emulator against hostile domain processes", .serialized)
struct HostileDomainTests {
    @Test(
        "a domain that floods hypercalls and never reads: the emulator's memory stays bounded, other domains keep working"
    )
    func floodWithoutReading() async throws {
        let directory = try TemporaryDirectory()
        let (emulator, _) = try await startEmulator(in: directory, domains: [(1, "a"), (2, "b"), (3, "c")])
        defer { emulator.signal(SIGKILL) }
        let baseline = try #require(emulator.residentKiB())

        let attacker = try RawDomainSocket(path: "\(directory.path)/a.sock")
        try attacker.sendHello()
        #expect(attacker.readWelcome()?.status == .accepted)
        let batch = RawDomainSocket.unknownHypercalls(16384)
        var sent = 0
        var peak = baseline
        var exchanged: ChildProcess?
        var exchangeStart = Date()
        var exchangeSeconds: Double?
        let start = Date()
        var lastSample = start
        // Five seconds of writing whatever the socket takes; the results are never read.
        while Date().timeIntervalSince(start) < 5 {
            // Whole frames only: a write may take part of the batch.
            let written = attacker.sendNow(batch, from: sent % batch.count)
            sent += written
            if written == 0 { try await Task.sleep(nanoseconds: 10_000_000) }
            if Date() > lastSample.addingTimeInterval(0.05) {
                peak = max(peak, emulator.residentKiB() ?? 0)
                lastSample = Date()
            }
            if let exchanged, !exchanged.isRunning, exchangeSeconds == nil {
                exchangeSeconds = Date().timeIntervalSince(exchangeStart)
            }
            if exchanged == nil, Date().timeIntervalSince(start) > 1 {
                // Meanwhile domain b sends domain c a message.
                exchangeStart = Date()
                exchanged = try ChildProcess.shell(
                    "hmx-cat listen --socket \(directory.path)/c.sock --port 7 --count 1 & sleep 0.3; "
                        + "hmx-cat send --socket \(directory.path)/b.sock 3:7 --message hello --wait 10; wait"
                )
            }
        }
        let growthMiB = Double(peak - baseline) / 1024
        print(
            "flooding domain: \(sent) bytes of hypercalls taken in 5 s; emulator RSS \(baseline) KiB, peak +\(String(format: "%.1f", growthMiB)) MiB"
        )
        #expect(growthMiB < 16, "emulator RSS grew by \(growthMiB) MiB")
        // The emulator stopped reading: what it took is bounded by its queue and the socket buffers.
        #expect(sent < 8 << 20, "the emulator took \(sent) bytes of hypercalls from a domain that reads nothing")
        let exchange = try #require(exchanged)
        #expect(await exchange.wait(seconds: 20) == 0, "\(exchange.errorOutput)")
        #expect(exchange.output.contains("from 2:"), "\(exchange.log)")
        let exchangeTime = exchangeSeconds ?? Date().timeIntervalSince(exchangeStart)
        print("domain b to domain c during the flood: \(String(format: "%.2f", exchangeTime)) s")
        #expect(
            emulator.errorOutput.contains("dropping domain") == false,
            "the flood was malformed: \(emulator.errorOutput)"
        )

        // Once the attacker leaves, its domain is free again and its buffers are gone.
        _ = consume attacker
        let link = try await attachWithin(seconds: 5, "\(directory.path)/a.sock")
        try await link.close().get()
        let after = try #require(emulator.residentKiB())
        #expect(
            Double(after - baseline) / 1024 < 16,
            "emulator RSS after the attacker left: \(after) KiB (baseline \(baseline) KiB)"
        )
        emulator.signal(SIGTERM)
        #expect(await emulator.wait(seconds: 10) == 0)
    }

    @Test("a hello and at once a close leave no ghost attachment: the domain attaches again")
    func helloThenClose() async throws {
        let directory = try TemporaryDirectory()
        let (emulator, _) = try await startEmulator(in: directory)
        defer { emulator.signal(SIGKILL) }
        for _ in 0..<20 {
            let socket = try RawDomainSocket(path: "\(directory.path)/a.sock")
            try socket.sendHello()
            // Closed before the welcome can be written.
        }
        let link = try await attachWithin(seconds: 5, "\(directory.path)/a.sock")
        #expect(link.localDomain == DomainID(1))
        try await link.close().get()
        emulator.signal(SIGTERM)
        #expect(await emulator.wait(seconds: 10) == 0)
    }

    @Test("40 silent connections to one domain's socket do not delay another domain's attach")
    func silentConnections() async throws {
        let directory = try TemporaryDirectory()
        let (emulator, _) = try await startEmulator(in: directory)
        defer { emulator.signal(SIGKILL) }
        let silent = try (0..<40).map { _ in try RawDomainSocket(path: "\(directory.path)/a.sock") }
        try await Task.sleep(nanoseconds: 200_000_000)
        let start = ContinuousClock.now
        let link = try await EmulatorLink.attach(socketPath: "\(directory.path)/b.sock")
        let elapsed = ContinuousClock.now - start
        print("attach as domain b with 40 silent connections on domain a's socket: \(elapsed)")
        #expect(elapsed < .seconds(1))
        try await link.close().get()
        // Domain a's own attach waits for its silent connections only.
        _ = consume silent
        let own = try await attachWithin(seconds: 5, "\(directory.path)/a.sock")
        try await own.close().get()
        emulator.signal(SIGTERM)
        #expect(await emulator.wait(seconds: 10) == 0)
    }

    @Test("out of file descriptors, the emulator pauses accepting instead of spinning on a readable socket")
    func outOfDescriptors() async throws {
        let directory = try TemporaryDirectory()
        let config = try directory.write(
            "emulator.yaml",
            "domains:\n  - {id: 1, name: a, socket: \(directory.path)/a.sock}\n  - {id: 2, name: b, socket: \(directory.path)/b.sock}\n"
        )
        // About 18 descriptors are in use once it runs: room for two connections.
        let emulator = try ChildProcess.shell("ulimit -n 20 && exec hmx-emulator run --config \(config)")
        defer { emulator.signal(SIGKILL) }
        #expect(await eventually(within: 10) { FileManager.default.fileExists(atPath: "\(directory.path)/b.sock") })
        let silent = try (0..<10).flatMap { _ in
            [
                try RawDomainSocket(path: "\(directory.path)/a.sock"),
                try RawDomainSocket(path: "\(directory.path)/b.sock"),
            ]
        }
        try await Task.sleep(nanoseconds: 300_000_000)
        let before = try #require(Self.cpuTicks(emulator.pid))
        try await Task.sleep(nanoseconds: 1_500_000_000)
        let used = try #require(Self.cpuTicks(emulator.pid)) - before
        print("emulator out of descriptors with \(silent.count) connections waiting: \(used) CPU ticks in 1.5 s")
        #expect(used < 30, "the emulator used \(used) ticks of 150 spinning on accept")
        #expect(
            emulator.errorOutput.components(separatedBy: "out of file descriptors").count == 2,
            "\(emulator.errorOutput)"
        )
        // Once the silent connections are gone, a domain attaches.
        _ = consume silent
        let link = try await attachWithin(seconds: 10, "\(directory.path)/b.sock")
        try await link.close().get()
        emulator.signal(SIGTERM)
        #expect(await emulator.wait(seconds: 10) == 0)
    }

    /// User and system CPU time of a process, in clock ticks (1/100 s).
    static func cpuTicks(_ pid: Int32) -> Int? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let end = stat.lastIndex(of: ")")
        else { return nil }
        // After "pid (comm)": state is field 3, utime 14, stime 15.
        let fields = stat[stat.index(after: end)...].split(separator: " ")
        guard fields.count > 12, let user = Int(fields[11]), let system = Int(fields[12]) else { return nil }
        return user + system
    }

    /// Attaches, retrying while the emulator refuses (the domain may still be detaching).
    func attachWithin(seconds: Double, _ path: String) async throws -> EmulatorLink {
        let deadline = Date().addingTimeInterval(seconds)
        while true {
            do {
                return try await EmulatorLink.attach(socketPath: path)
            } catch {
                if Date() > deadline { throw error }
                try await Task.sleep(nanoseconds: 50_000_000)
            }
        }
    }
}
