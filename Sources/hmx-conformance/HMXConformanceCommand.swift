// SPDX-License-Identifier: Apache-2.0
import ArgumentParser
import HMXConformance
import HMXCore
import NIOCore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Runs the Argo conformance suite (HMXConformance) against a real Xen hypervisor or
/// the emulator, and measures message rates through the same links.
@main
struct HMXConformanceCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hmx-conformance",
        abstract: "Run the Argo conformance suite or a link benchmark against Xen or the emulator.",
        subcommands: [Check.self, Bench.self, Agent.self],
        defaultSubcommand: Check.self
    )
}

/// `hmx-conformance [check]`: every check of ConformanceSuite, one line each.
struct Check: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the conformance suite (the default subcommand).",
        discussion: """
            Prints one line per check (PASS, FAIL or N/A) and the closing line \
            'conformance: N passed, M failed[, K skipped]'. Exit status: 0 if no check \
            failed, 1 if one did, 2 if the backend could not be opened.
            On Xen there is one domain per process: --peer-agent DOMID makes domain \
            DOMID, running 'hmx-conformance agent', the second domain (else the checks \
            that need one are skipped); with the emulator, --peer-socket supplies it.
            """
    )

    @OptionGroup var backend: BackendOptions

    @Flag(help: "The hypervisor allows wildcard rings (Xen: argo=1,mac-permissive=1; emulator: mac_permissive: true).")
    var macPermissive = false

    @Option(help: "A domain id that does not exist.")
    var absentDomain: UInt16 = 0x7000

    @Option(name: .customLong("only"), help: "Run only the checks whose name contains this text (repeatable).")
    var only: [String] = []

    @Flag(help: "List the checks and exit.")
    var list = false

    @Option(help: "Xen: the domain running 'hmx-conformance agent', the second domain of the two-domain checks.")
    var peerAgent: UInt16?

    func validate() throws {
        if self.peerAgent != nil, self.backend.backend != .xen {
            throw ValidationError("--peer-agent is for --backend xen (the emulator's second domain is --peer-socket)")
        }
    }

    func run() async throws {
        if self.list {
            for name in ConformanceSuite.checkNames { writeLine(name) }
            return
        }
        let pagesBefore = self.backend.reservedPages()
        let links = try await self.backend.open(peer: true)
        writeLine("backend: \(links.description)")
        var remote: RemotePeer?
        if let agentDomain = self.peerAgent {
            do {
                let channel = try XenStoreChannel(domain: DomainID(agentDomain))
                try await channel.waitForAgent(seconds: 240)
                remote = try await RemotePeer.connect { try await channel.exchange($0) }
                writeLine("peer: the agent in domain \(agentDomain)")
            } catch {
                printError("hmx-conformance: cannot reach the agent in domain \(agentDomain): \(error)")
                await links.close()
                throw ExitCode(2)
            }
        }
        // The last check ends the second domain: the agent quits (its domU then powers
        // off), or the emulator's second link closes.
        let peerEnded = Mutex(false)
        var destroyPeer: (@Sendable () async throws -> Void)?
        if let remote {
            destroyPeer = {
                try await remote.quit()
                peerEnded.withLock { $0 = true }
            }
        } else if let peer = links.peer {
            destroyPeer = { try await peer.close().get() }
        }
        let world = ConformanceSuite.World(
            primary: links.primary,
            peer: links.peer,
            remotePeer: remote,
            wildcardRingsAllowed: self.macPermissive,
            absentDomain: DomainID(self.absentDomain),
            destroyPeer: destroyPeer
        )
        let started = monotonicSeconds()
        let passed: Bool
        if self.only.isEmpty {
            passed = await ConformanceSuite.runAll(in: world, print: writeLine)
        } else {
            passed = await Self.runSelected(self.only, in: world)
        }
        printError("conformance: ran for \(fixed(monotonicSeconds() - started, 1)) s")
        if let remote, !peerEnded.withLock({ $0 }) {
            do { try await remote.quit() } catch { printError("hmx-conformance: the agent did not quit: \(error)") }
        }
        // Every check unregisters its rings and releases its scratch frames; on Xen the
        // domain must hold exactly as many pages as before, with the link still open.
        // Scratch releases are queued on the link's loop: let them run first (FIFO).
        _ = try? await links.primary.eventLoop.submit {}.get()
        let pagesAfterChecks = self.backend.reservedPages()
        await links.close()
        let pagesAfterClose = self.backend.reservedPages()
        var framesReturned = true
        if let before = pagesBefore, let afterChecks = pagesAfterChecks, let afterClose = pagesAfterClose {
            framesReturned = afterChecks == before && afterClose == before
            writeLine(
                "\(framesReturned ? "frames: all returned" : "FAIL frames leaked"): domain pages \(before) before, "
                    + "\(afterChecks) after the checks (link open), \(afterClose) after close"
            )
        }
        if !passed || !framesReturned { throw ExitCode.failure }
    }

    /// Like ``ConformanceSuite/runAll(in:print:)`` for the checks matching `filters`.
    private static func runSelected(_ filters: [String], in world: ConformanceSuite.World) async -> Bool {
        var counts = (passed: 0, failed: 0, skipped: 0)
        for name in ConformanceSuite.checkNames where filters.contains(where: { name.contains($0) }) {
            switch await ConformanceSuite.run(name, in: world) {
            case .passed:
                counts.passed += 1
                writeLine("PASS \(name)")
            case .failed(let why):
                counts.failed += 1
                writeLine("FAIL \(name): \(why)")
            case .notApplicable(let why):
                counts.skipped += 1
                writeLine("N/A  \(name): \(why)")
            }
        }
        writeLine(
            "conformance: \(counts.passed) passed, \(counts.failed) failed"
                + (counts.skipped > 0 ? ", \(counts.skipped) skipped" : "")
        )
        return counts.failed == 0 && counts.passed > 0
    }
}

// MARK: - Output

/// Writes one line to standard output at once (the lab's console is a serial line;
/// nothing may sit in a buffer if the process dies).
@Sendable func writeLine(_ line: String) {
    writeAll(1, line.hasSuffix("\n") ? line : line + "\n")
}

/// Writes one line to standard error at once.
func printError(_ line: String) {
    writeAll(2, line.hasSuffix("\n") ? line : line + "\n")
}

private func writeAll(_ fd: Int32, _ text: String) {
    var text = text
    text.withUTF8 { bytes in
        var offset = 0
        while offset < bytes.count {
            let written = write(fd, bytes.baseAddress! + offset, bytes.count - offset)
            if written <= 0 {
                if written < 0 && errno == EINTR { continue }
                return
            }
            offset += written
        }
    }
}

/// `value` with `digits` decimals (no Foundation).
func fixed(_ value: Double, _ digits: Int) -> String {
    guard value.isFinite else { return "\(value)" }
    var scale = 1.0
    for _ in 0..<digits { scale *= 10 }
    let scaled = (abs(value) * scale).rounded()
    let whole = Int(scaled / scale)
    let fraction = Int(scaled - Double(whole) * scale)
    var text = (value < 0 && scaled > 0 ? "-" : "") + String(whole)
    if digits > 0 {
        let digitsText = String(fraction)
        text += "." + String(repeating: "0", count: digits - digitsText.count) + digitsText
    }
    return text
}

/// Seconds on the monotonic clock.
func monotonicSeconds() -> Double {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
}
