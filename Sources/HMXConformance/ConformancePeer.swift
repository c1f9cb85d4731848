// SPDX-License-Identifier: Apache-2.0
import HMXCore
import NIOCore
import Synchronization

/// The second domain of the two-domain checks, as far as they use it: it sends, and
/// its wake-ups (VIRQ_ARGO events) are counted.
///
/// In-process when one process can be two domains (the emulator: a second link), or a
/// ``RemotePeer``: requests to a ``ConformanceAgent`` running in the other domain (on
/// Xen, one process is one domain; `hmx-conformance agent` carries the requests
/// through xenstore, which is not Argo and raises no Argo events).
public protocol ConformancePeer: Sendable {
    var domain: DomainID { get }
    /// sendv from this domain, one iov per payload, message type datagram.
    func sendv(source: ArgoAddr, destination: ArgoAddr, payloads: [[UInt8]]) async throws -> Int64
    /// Events this domain has seen since it was opened.
    func eventCount() async throws -> Int
}

extension ConformancePeer {
    func self_(_ port: UInt32 = 0) -> ArgoAddr { ArgoAddr(port: port, domain: self.domain.rawValue) }

    /// Waits until more than `mark` events were seen, or the deadline passes.
    func waitForEvent(beyond mark: Int, within milliseconds: Int = 3000) async throws -> Bool {
        let clock = ContinuousClock()
        let deadline = clock.now + .milliseconds(milliseconds)
        while try await self.eventCount() <= mark {
            guard clock.now < deadline else { return false }
            try? await Task.sleep(for: .milliseconds(5))
        }
        return true
    }

    /// True if no event beyond `mark` arrives within the interval.
    func isQuiet(beyond mark: Int, for milliseconds: Int = 300) async throws -> Bool {
        try? await Task.sleep(for: .milliseconds(milliseconds))
        return try await self.eventCount() == mark
    }
}

extension Raw: ConformancePeer {
    func sendv(source: ArgoAddr, destination: ArgoAddr, payloads: [[UInt8]]) async throws -> Int64 {
        try await self.sendv(
            source: source,
            destination: destination,
            payloads: payloads,
            type: UInt64(HMXMessageType.datagram)
        )
    }

    func eventCount() async throws -> Int { self.events.count }
}

/// The requests of the agent protocol: one line of text each, answered with one line
/// (a decimal number, or `error REASON`).
///
///     domain                                        this domain's id
///     events                                        events seen so far
///     sendv SRCDOM SRCPORT DSTDOM DSTPORT PAYLOADS  PAYLOADS: "-" for none, else hex
///                                                   payloads separated by commas
///     quit                                          the agent answers 0 and stops
public enum AgentRequest: Equatable, Sendable {
    case domain
    case events
    case sendv(source: ArgoAddr, destination: ArgoAddr, payloads: [[UInt8]])
    case quit

    /// Payload bytes a request may carry (xenstore values are at most 4 KiB).
    public static let maximumPayloadBytes = 1500

    public var line: String {
        switch self {
        case .domain: return "domain"
        case .events: return "events"
        case .quit: return "quit"
        case .sendv(let source, let destination, let payloads):
            let encoded = payloads.isEmpty ? "-" : payloads.map { Self.hex($0) }.joined(separator: ",")
            return
                "sendv \(source.domain) \(source.port) \(destination.domain) \(destination.port) \(encoded)"
        }
    }

    /// Parses one request line; nil for anything else (bounded: at most
    /// ``maximumPayloadBytes`` of payload).
    public init?(line: String) {
        let words = line.split(separator: " ", omittingEmptySubsequences: false).map(String.init)
        switch words.first {
        case "domain" where words.count == 1: self = .domain
        case "events" where words.count == 1: self = .events
        case "quit" where words.count == 1: self = .quit
        case "sendv" where words.count == 6:
            guard let sourceDomain = UInt16(words[1]), let sourcePort = UInt32(words[2]),
                let destinationDomain = UInt16(words[3]), let destinationPort = UInt32(words[4])
            else { return nil }
            var payloads: [[UInt8]] = []
            if words[5] != "-" {
                for field in words[5].split(separator: ",", omittingEmptySubsequences: false) {
                    guard let bytes = Self.bytes(fromHex: field) else { return nil }
                    payloads.append(bytes)
                }
            }
            guard payloads.reduce(0, { $0 + $1.count }) <= Self.maximumPayloadBytes else { return nil }
            self = .sendv(
                source: ArgoAddr(port: sourcePort, domain: sourceDomain),
                destination: ArgoAddr(port: destinationPort, domain: destinationDomain),
                payloads: payloads
            )
        default: return nil
        }
    }

    private static let digits = Array("0123456789abcdef".utf8)

    static func hex(_ bytes: [UInt8]) -> String {
        var text: [UInt8] = []
        text.reserveCapacity(bytes.count * 2)
        for byte in bytes {
            text.append(Self.digits[Int(byte >> 4)])
            text.append(Self.digits[Int(byte & 0xF)])
        }
        return String(decoding: text, as: UTF8.self)
    }

    static func bytes(fromHex text: Substring) -> [UInt8]? {
        let utf8 = Array(text.utf8)
        guard utf8.count % 2 == 0, utf8.count <= 2 * Self.maximumPayloadBytes else { return nil }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(utf8.count / 2)
        var index = 0
        while index < utf8.count {
            guard let high = Self.digits.firstIndex(of: utf8[index]),
                let low = Self.digits.firstIndex(of: utf8[index + 1])
            else { return nil }
            bytes.append(UInt8(high << 4 | low))
            index += 2
        }
        return bytes
    }
}

/// The domain side of the agent protocol: answers requests with its own link.
public final class ConformanceAgent: Sendable {
    private let raw: Raw
    private let stopped = Mutex(false)

    public init(link: any HMXRawHypercalls) {
        self.raw = Raw(link: link, tracker: Tracker(), events: EventWatch(link))
    }

    /// True once a `quit` was answered.
    public var isStopped: Bool { self.stopped.withLock { $0 } }

    public var domain: DomainID { self.raw.domain }

    /// The answer to one request line.
    public func answer(_ line: String) async -> String {
        guard let request = AgentRequest(line: line) else { return "error malformed request" }
        switch request {
        case .domain: return "\(self.raw.domain.rawValue)"
        case .events: return "\(self.raw.events.count)"
        case .quit:
            self.stopped.withLock { $0 = true }
            return "0"
        case .sendv(let source, let destination, let payloads):
            do {
                let result = try await self.raw.sendv(source: source, destination: destination, payloads: payloads)
                return "\(result)"
            } catch {
                return "error \(error)"
            }
        }
    }

    /// Frees the scratch memory of the requests answered so far.
    public func releaseMemory() {
        let (_, scratch) = self.raw.tracker.take()
        for item in scratch { item.link.releaseScratch(item.scratch) }
    }
}

/// A peer in another domain, reached through `exchange`: a request line in, the
/// agent's answer out (see ``ConformanceAgent``).
public struct RemotePeer: ConformancePeer {
    public let domain: DomainID
    private let exchange: @Sendable (String) async throws -> String

    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    /// Asks the agent for its domain id first.
    public static func connect(exchange: @escaping @Sendable (String) async throws -> String) async throws -> RemotePeer
    {
        let answer = try await exchange(AgentRequest.domain.line)
        guard let domain = UInt16(answer) else {
            throw Failure(description: "the agent answered '\(answer)' to domain")
        }
        return RemotePeer(domain: DomainID(domain), exchange: exchange)
    }

    private init(domain: DomainID, exchange: @escaping @Sendable (String) async throws -> String) {
        self.domain = domain
        self.exchange = exchange
    }

    public func sendv(source: ArgoAddr, destination: ArgoAddr, payloads: [[UInt8]]) async throws -> Int64 {
        try await self.number(.sendv(source: source, destination: destination, payloads: payloads))
    }

    public func eventCount() async throws -> Int { Int(try await self.number(.events)) }

    /// Stops the agent.
    public func quit() async throws { _ = try await self.number(.quit) }

    private func number(_ request: AgentRequest) async throws -> Int64 {
        let answer = try await self.exchange(request.line)
        guard let value = Int64(answer) else {
            throw Failure(description: "the agent in domain \(self.domain) answered '\(answer)' to \(request.line)")
        }
        return value
    }
}
