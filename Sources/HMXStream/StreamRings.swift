// SPDX-License-Identifier: Apache-2.0
import HMXCore
import NIOCore

/// This gateway's receive rings, for both backends: one partner ring per peer domain
/// it talks to, and a wildcard ring where an export accepts any domain. Draining them
/// into the multiplexer, and knowing when the NULL notify that wakes blocked senders
/// is needed, live here.
public struct StreamRings {
    private var partnerRings: [DomainID: HMXRing] = [:]
    private var wildcardRing: HMXRing?

    public init() {}

    /// What one drain did.
    public struct Drain {
        /// Messages taken out of the rings.
        public var messages = 0
        /// Some ring was, before or while it was drained, full enough that a sender may
        /// have found it full: after draining, a NULL notify must wake it.
        public var needsNotify = false
        /// Messages were left in a ring because their sender's inbox is full: drain
        /// again once it has been worked off.
        public var leftMessages = false
        /// Rings found corrupt (and flushed), with the error.
        public var corrupt: [(ring: DomainID, error: any Error)] = []
    }

    public mutating func add(_ ring: HMXRing) {
        if ring.partner == .any {
            self.wildcardRing = ring
        } else {
            self.partnerRings[ring.partner] = ring
        }
    }

    /// Forgets our partner ring for `domain` (the hypervisor destroyed it).
    public mutating func removePartnerRing(for domain: DomainID) {
        self.partnerRings[domain] = nil
    }

    public var hasWildcardRing: Bool { self.wildcardRing != nil }

    /// Every ring, for unregistering.
    public var all: [HMXRing] { Array(self.partnerRings.values) + (self.wildcardRing.map { [$0] } ?? []) }

    public mutating func removeAll() {
        self.partnerRings.removeAll()
        self.wildcardRing = nil
    }

    /// Moves the rings' messages into `multiplexer`, each only while its sender's inbox
    /// has room: a peer that sends faster than its share is handled waits in its own
    /// partner ring (its sends find it full). The wildcard ring is shared by every
    /// domain without a partner ring, so it stops at the first message whose sender's
    /// inbox is full.
    public func drain(into multiplexer: inout StreamMultiplexer, now: NIODeadline) -> Drain {
        var drain = Drain()
        for ring in self.partnerRings.values {
            self.drain(
                ring,
                largest: PeerSender.packingLimit(ringMaximumMessageSize: Int(ring.maximumMessageSize)),
                into: &multiplexer,
                now: now,
                drain: &drain
            )
        }
        if let ring = self.wildcardRing {
            // Other senders than gateways may send up to the ring's maximum.
            self.drain(ring, largest: Int(ring.maximumMessageSize), into: &multiplexer, now: now, drain: &drain)
        }
        return drain
    }

    private func drain(
        _ ring: HMXRing,
        largest: Int,
        into multiplexer: inout StreamMultiplexer,
        now: NIODeadline,
        drain: inout Drain
    ) {
        // A sender that found the ring full (EAGAIN) cannot add to it until woken, so
        // the next look at the ring after its EAGAIN sees it at least that full: looking
        // before every message (and before the first) never misses one. A peer
        // gateway's message is at most the packing limit; if at least that much (plus
        // header and slot) was free, nobody can be waiting.
        let threshold = Int(ring.length) - largest - 32
        do {
            while let sender = try ring.nextSender() {
                if Int(ring.usedBytes) >= threshold { drain.needsNotify = true }
                if multiplexer.isInboxFull(of: sender) {
                    drain.leftMessages = true
                    return
                }
                try ring.receive(limit: 1) { message in
                    var buffer = ByteBufferAllocator().buffer(capacity: message.payloadLength)
                    buffer.writeBytes(message.first)
                    buffer.writeBytes(message.second)
                    multiplexer.received(buffer, type: message.header.messageType, from: sender, now: now)
                }
                drain.messages += 1
            }
        } catch {
            drain.corrupt.append((ring.partner, error))
        }
    }
}
