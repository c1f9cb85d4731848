// SPDX-License-Identifier: Apache-2.0
import ArgumentParser
import HMXConformance
import HMXCore
import HMXXen
import NIOCore
import Synchronization

/// `hmx-conformance agent`: the second domain of the two-domain checks on Xen, where
/// one process is one domain. Run it in a domU; `hmx-conformance --backend xen
/// --peer-agent DOMID` in dom0 then sends it requests (send this, how many events)
/// through xenstore, which raises no Argo events, so the events it counts are Argo's.
struct Agent: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Be the second domain of the two-domain checks (Xen; run in a domU).",
        discussion: """
            Answers requests written to /local/domain/ID/data/hmx-conformance/request \
            (ID: this domain) until dom0's suite says quit or --timeout seconds pass. \
            Prints 'agent: quit after N requests' (exit 0), or why it stopped (exit 1).
            """
    )

    @Option(help: "This domain's id, if xenstore cannot tell.")
    var domid: UInt16?

    @Option(help: "Give up after this many seconds.")
    var timeout: Int = 600

    func run() async throws {
        let link = try await XenLink.open(configuration: .init(localDomain: self.domid.map { DomainID(rawValue: $0) }))
        let agent = ConformanceAgent(link: link)
        writeLine("agent: domain \(link.localDomain), \(link.guestType) guest")
        let channel = try XenStoreChannel(domain: link.localDomain)
        try channel.announce()
        let deadline = monotonicSeconds() + Double(self.timeout)
        var answered = 0
        var last: UInt64 = 0
        while !agent.isStopped {
            guard monotonicSeconds() < deadline else {
                writeLine("agent: FAILED: no quit within \(self.timeout) s (\(answered) requests answered)")
                _ = try? await link.close().get()
                throw ExitCode.failure
            }
            guard let (sequence, line) = try channel.takeRequest(after: last) else {
                try await Task.sleep(for: .milliseconds(2))
                continue
            }
            last = sequence
            let answer = await agent.answer(line)
            agent.releaseMemory()
            try channel.answer(sequence, answer)
            answered += 1
        }
        writeLine("agent: quit after \(answered) requests")
        _ = try? await link.close().get()
    }
}

/// Requests and answers between dom0 and a domU's agent through xenstore, under the
/// domU's own path (which both may write): `request` holds "SEQ LINE", `response`
/// "SEQ ANSWER"; the sequence number tells a new request, and its answer, from the
/// last one.
final class XenStoreChannel: Sendable {
    private let store: Mutex<XenStore>
    private let base: String
    private let sequence = Mutex<UInt64>(0)

    init(domain: DomainID) throws {
        self.store = Mutex(try XenStore())
        self.base = "/local/domain/\(domain.rawValue)/data/hmx-conformance"
    }

    /// The agent: says it is ready.
    func announce() throws {
        try self.store.withLock { try $0.write("\(self.base)/ready", "1") }
    }

    /// dom0: waits until the agent said it is ready (bounded: the domU may still boot).
    func waitForAgent(seconds: Double) async throws {
        let deadline = monotonicSeconds() + seconds
        while try self.store.withLock({ try $0.read("\(self.base)/ready") }) == nil {
            guard monotonicSeconds() < deadline else {
                throw AgentFailure(description: "no agent at \(self.base) within \(Int(seconds)) s")
            }
            try await Task.sleep(for: .milliseconds(100))
        }
    }

    /// The agent: the request after `after`, if one was written.
    func takeRequest(after: UInt64) throws -> (UInt64, String)? {
        guard let value = try self.store.withLock({ try $0.read("\(self.base)/request") }) else { return nil }
        guard let space = value.firstIndex(of: " "), let sequence = UInt64(value[..<space]), sequence > after
        else { return nil }
        return (sequence, String(value[value.index(after: space)...]))
    }

    /// The agent: the answer to request `sequence`.
    func answer(_ sequence: UInt64, _ answer: String) throws {
        try self.store.withLock { try $0.write("\(self.base)/response", "\(sequence) \(answer)") }
    }

    /// dom0: sends one request and waits for its answer (bounded).
    func exchange(_ line: String, seconds: Double = 30) async throws -> String {
        let sequence = self.sequence.withLock { value in
            value += 1
            return value
        }
        try self.store.withLock { try $0.write("\(self.base)/request", "\(sequence) \(line)") }
        let deadline = monotonicSeconds() + seconds
        let prefix = "\(sequence) "
        while true {
            if let value = try self.store.withLock({ try $0.read("\(self.base)/response") }), value.hasPrefix(prefix) {
                return String(value.dropFirst(prefix.count))
            }
            guard monotonicSeconds() < deadline else {
                throw AgentFailure(description: "no answer from the agent within \(Int(seconds)) s to \(line)")
            }
            try await Task.sleep(for: .milliseconds(1))
        }
    }
}

struct AgentFailure: Error, CustomStringConvertible {
    var description: String
}
