// SPDX-License-Identifier: Apache-2.0
import HMXCore
import NIOCore
import Synchronization

/// The second domain of the two-domain checks, as far as they use it: it sends,
/// receives on rings of its own, notifies, and its wake-ups (VIRQ_ARGO events) are
/// counted.
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
    /// Registers a receive ring in this domain (register_ring); its memory stays until
    /// ``unregisterRing(port:partner:)``. Returns the hypercall's result.
    func registerRing(port: UInt32, partner: UInt16, length: UInt32) async throws -> Int64
    /// Takes the next message off that ring; nil if it is empty.
    func receive(port: UInt32, partner: UInt16) async throws -> ReceivedMessage?
    /// The NULL notify from this domain: wakes the senders that found its rings full.
    func nullNotify() async throws -> Int64
    /// Unregisters the ring and frees its memory.
    func unregisterRing(port: UInt32, partner: UInt16) async throws -> Int64
}

/// A message taken off a ring of the second domain: the source the hypervisor stamped,
/// and the payload.
public struct ReceivedMessage: Equatable, Sendable {
    public var source: ArgoAddr
    public var payload: [UInt8]

    public init(source: ArgoAddr, payload: [UInt8]) {
        self.source = source
        self.payload = payload
    }
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

    func registerRing(port: UInt32, partner: UInt16, length: UInt32) async throws -> Int64 {
        try await self.register(port: port, partner: partner, length: length).result
    }

    func receive(port: UInt32, partner: UInt16) async throws -> ReceivedMessage? {
        guard let ring = self.tracker.ring(of: self.domain, port: port, partner: partner) else {
            throw ConformanceSuite.CheckFailure("no ring \(port) for \(partner) in domain \(self.domain)")
        }
        return try Self.receive(from: ring.memory, length: ring.length)
    }

    func nullNotify() async throws -> Int64 {
        try await self.call(ArgoABI.Op.notify)
    }

    func unregisterRing(port: UInt32, partner: UInt16) async throws -> Int64 {
        try await self.unregister(port: port, partner: partner)
    }

    /// The next message of a ring registered with ``register(port:partner:length:flags:pad:npages:)``.
    static func receive(from memory: HMXScratch, length: UInt32) throws -> ReceivedMessage? {
        var ring = RawRing(memory, length: length)
        return try ring.next().map { ReceivedMessage(source: $0.header.source, payload: $0.payload) }
    }
}

/// The requests of the agent protocol: one line of text each, answered with one line
/// (a decimal number, or `error REASON`).
///
///     domain                                        this domain's id
///     events                                        events seen so far
///     sendv SRCDOM SRCPORT DSTDOM DSTPORT PAYLOADS  PAYLOADS: "-" for none, else hex
///                                                   payloads separated by commas
///     register PORT PARTNER LENGTH                  register_ring's result
///     receive PORT PARTNER                          the next message of that ring:
///                                                   "SRCDOM SRCPORT PAYLOAD" (hex, "-"
///                                                   if empty), or "none"
///     notify                                        the NULL notify's result
///     unregister PORT PARTNER                       unregister_ring's result
///     quit                                          the agent answers 0 and stops
public enum AgentRequest: Equatable, Sendable {
    case domain
    case events
    case sendv(source: ArgoAddr, destination: ArgoAddr, payloads: [[UInt8]])
    case register(port: UInt32, partner: UInt16, length: UInt32)
    case receive(port: UInt32, partner: UInt16)
    case notify
    case unregister(port: UInt32, partner: UInt16)
    case quit

    /// Payload bytes a request or an answer may carry (xenstore values are at most 4 KiB).
    public static let maximumPayloadBytes = 1500
    /// The largest ring the agent registers (its memory is the agent's).
    public static let maximumRingLength: UInt32 = 65536
    /// Rings the agent keeps at once.
    public static let maximumRings = 16

    public var line: String {
        switch self {
        case .domain: return "domain"
        case .events: return "events"
        case .quit: return "quit"
        case .notify: return "notify"
        case .register(let port, let partner, let length): return "register \(port) \(partner) \(length)"
        case .receive(let port, let partner): return "receive \(port) \(partner)"
        case .unregister(let port, let partner): return "unregister \(port) \(partner)"
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
        case "notify" where words.count == 1: self = .notify
        case "register" where words.count == 4:
            guard let port = UInt32(words[1]), let partner = UInt16(words[2]), let length = UInt32(words[3]),
                length <= Self.maximumRingLength
            else { return nil }
            self = .register(port: port, partner: partner, length: length)
        case "receive" where words.count == 3:
            guard let port = UInt32(words[1]), let partner = UInt16(words[2]) else { return nil }
            self = .receive(port: port, partner: partner)
        case "unregister" where words.count == 3:
            guard let port = UInt32(words[1]), let partner = UInt16(words[2]) else { return nil }
            self = .unregister(port: port, partner: partner)
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
    private struct RingKey: Hashable {
        var port: UInt32
        var partner: UInt16
    }

    private let raw: Raw
    private let stopped = Mutex(false)
    /// The rings registered for the suite, with their memory (kept across requests).
    private let rings = Mutex<[RingKey: (memory: HMXScratch, length: UInt32)]>([:])

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
            for key in self.rings.withLock({ Array($0.keys) }) {
                _ = try? await self.unregister(key)
            }
            self.stopped.withLock { $0 = true }
            return "0"
        case .sendv(let source, let destination, let payloads):
            return await Self.number {
                try await self.raw.sendv(source: source, destination: destination, payloads: payloads)
            }
        case .register(let port, let partner, let length):
            let key = RingKey(port: port, partner: partner)
            guard self.rings.withLock({ $0[key] == nil && $0.count < AgentRequest.maximumRings }) else {
                return "error ring \(port) for \(partner) is registered already, or too many rings"
            }
            do {
                let (result, memory) = try await self.raw.register(port: port, partner: partner, length: length)
                if result == 0 { self.rings.withLock { $0[key] = (memory, length) } }
                return "\(result)"
            } catch {
                return "error \(error)"
            }
        case .receive(let port, let partner):
            guard let ring = self.rings.withLock({ $0[RingKey(port: port, partner: partner)] }) else {
                return "error no ring \(port) for \(partner)"
            }
            do {
                guard let message = try Raw.receive(from: ring.memory, length: ring.length) else { return "none" }
                guard message.payload.count <= AgentRequest.maximumPayloadBytes else {
                    return "error a message of \(message.payload.count) bytes is too large for an answer"
                }
                let payload = message.payload.isEmpty ? "-" : AgentRequest.hex(message.payload)
                return "\(message.source.domain) \(message.source.port) \(payload)"
            } catch {
                return "error \(error)"
            }
        case .notify:
            return await Self.number { try await self.raw.call(ArgoABI.Op.notify) }
        case .unregister(let port, let partner):
            return await Self.number { try await self.unregister(RingKey(port: port, partner: partner)) }
        }
    }

    private static func number(_ body: () async throws -> Int64) async -> String {
        do {
            return "\(try await body())"
        } catch {
            return "error \(error)"
        }
    }

    /// Unregisters one of the suite's rings and frees its memory once Argo let it go.
    private func unregister(_ key: RingKey) async throws -> Int64 {
        let result = try await self.raw.unregister(port: key.port, partner: key.partner)
        if result == 0, let ring = self.rings.withLock({ $0.removeValue(forKey: key) }) {
            self.raw.link.releaseScratch(ring.memory)
        }
        return result
    }

    /// Frees the scratch memory of the requests answered so far (not the memory of the
    /// rings still registered).
    public func releaseMemory() {
        let (_, scratch) = self.raw.tracker.take()
        let kept = self.rings.withLock { Set($0.values.map(\.memory.guestAddress)) }
        for item in scratch where !kept.contains(item.scratch.guestAddress) {
            item.link.releaseScratch(item.scratch)
        }
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

    public func registerRing(port: UInt32, partner: UInt16, length: UInt32) async throws -> Int64 {
        try await self.number(.register(port: port, partner: partner, length: length))
    }

    public func receive(port: UInt32, partner: UInt16) async throws -> ReceivedMessage? {
        let request = AgentRequest.receive(port: port, partner: partner)
        let answer = try await self.exchange(request.line)
        if answer == "none" { return nil }
        let words = answer.split(separator: " ", omittingEmptySubsequences: false)
        guard words.count == 3, let domain = UInt16(words[0]), let sourcePort = UInt32(words[1]),
            let payload = words[2] == "-" ? [] : AgentRequest.bytes(fromHex: words[2])
        else {
            throw Failure(description: "the agent in domain \(self.domain) answered '\(answer)' to \(request.line)")
        }
        return ReceivedMessage(source: ArgoAddr(port: sourcePort, domain: domain), payload: payload)
    }

    public func nullNotify() async throws -> Int64 { try await self.number(.notify) }

    public func unregisterRing(port: UInt32, partner: UInt16) async throws -> Int64 {
        try await self.number(.unregister(port: port, partner: partner))
    }

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
