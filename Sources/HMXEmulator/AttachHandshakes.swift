// SPDX-License-Identifier: Apache-2.0
import HMXCore
import NIOCore

/// The attach handshakes under way: accepted connections waiting for their hello, each
/// with a deadline, at most ``EmulatorLimits/handshakesPerDomain`` per domain socket.
///
/// A plain value, driven by the emulator's accept thread, which polls every pending
/// connection at once (none is ever read with a blocking call): a connection that says
/// nothing holds one of its own domain's slots until its deadline, and nothing else.
/// Once a domain's slots are taken its socket is not accepted from; new connections
/// wait in the kernel's listen backlog, against that domain only.
struct AttachHandshakes {
    struct Pending: Equatable {
        var fd: Int32
        var domain: EmulatorConfig.DomainEntry
        var deadline: NIODeadline
        /// The connecting process, as the kernel reports it (SO_PEERCRED).
        var pid: Int32
        var uid: UInt32
    }

    let limits: EmulatorLimits
    /// By descriptor.
    private(set) var pending: [Int32: Pending] = [:]
    /// Handshakes under way per domain id.
    private var counts: [UInt16: Int] = [:]

    init(limits: EmulatorLimits) {
        self.limits = limits
    }

    /// Whether another connection to this domain's socket may be accepted now.
    func hasSlot(for domain: DomainID) -> Bool {
        self.counts[domain.rawValue, default: 0] < self.limits.handshakesPerDomain
    }

    /// Starts waiting for the hello on `fd`, accepted at `now`.
    mutating func begin(fd: Int32, domain: EmulatorConfig.DomainEntry, pid: Int32, uid: UInt32, now: NIODeadline) {
        precondition(self.hasSlot(for: domain.id) && self.pending[fd] == nil)
        self.pending[fd] = Pending(
            fd: fd,
            domain: domain,
            deadline: now + TimeAmount(self.limits.handshakeTimeout),
            pid: pid,
            uid: uid
        )
        self.counts[domain.id.rawValue, default: 0] += 1
    }

    /// Ends the handshake on `fd` (hello read, refused or dropped), freeing its slot.
    mutating func end(fd: Int32) -> Pending? {
        guard let ended = self.pending.removeValue(forKey: fd) else { return nil }
        let id = ended.domain.id.rawValue
        self.counts[id]! -= 1
        if self.counts[id] == 0 { self.counts[id] = nil }
        return ended
    }

    /// Ends every handshake whose deadline has passed at `now`.
    mutating func endExpired(now: NIODeadline) -> [Pending] {
        let expired = self.pending.values.filter { $0.deadline <= now }.map(\.fd)
        return expired.compactMap { self.end(fd: $0) }
    }

    /// Ends every handshake for which `isStale` holds (its domain was removed or
    /// changed by a reload).
    mutating func endAll(where isStale: (Pending) -> Bool) -> [Pending] {
        let stale = self.pending.values.filter(isStale).map(\.fd)
        return stale.compactMap { self.end(fd: $0) }
    }

    /// Milliseconds until the earliest deadline (at least 1), or -1 when nothing waits:
    /// the accept thread's poll timeout.
    func pollTimeout(now: NIODeadline) -> Int32 {
        guard let earliest = self.pending.values.map(\.deadline).min() else { return -1 }
        let milliseconds = (earliest - now).nanoseconds / 1_000_000 + 1
        return Int32(clamping: max(1, milliseconds))
    }

    var descriptors: [Int32] { Array(self.pending.keys) }
}
