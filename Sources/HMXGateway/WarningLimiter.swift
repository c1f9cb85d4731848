// SPDX-License-Identifier: Apache-2.0
import HMXCore
import NIOCore

/// Rate limits the warnings another domain can provoke, per (peer, kind): a peer that
/// floods the gateway with refused OPENs, malformed messages or restarts gets a few
/// lines, then one line per interval saying how many were suppressed. One domain's
/// flood thus costs a bounded share of the log, and nothing is built for a line that
/// is not written.
struct WarningLimiter {
    enum Kind: String, Sendable {
        case refusedOpen = "refused_open"
        case malformed
        case restarted
        case violation
        case reusedConnectionID = "reused_connection_id"
        case reset
        case peerFailed = "peer_failed"
    }

    struct Key: Hashable {
        var peer: DomainID
        var kind: Kind
    }

    /// What to do with one warning.
    enum Decision: Equatable {
        /// Write it; `suppressed` warnings of its kind were left out since the last one.
        case log(suppressed: Int)
        case suppress
    }

    private struct Window {
        var start: NIODeadline
        var logged: Int
        var suppressed: Int
    }

    /// Lines per (peer, kind) and interval.
    static let burst = 5
    static let interval = TimeAmount.seconds(10)
    /// Keys tracked at once; beyond, warnings of new keys are suppressed and counted.
    static let maximumKeys = 4096

    private var windows: [Key: Window] = [:]
    /// Windows with suppressed warnings not reported yet.
    private var pending: Set<Key> = []
    /// Warnings suppressed because too many keys were tracked.
    private(set) var untracked = 0
    /// Warnings suppressed in all.
    private(set) var suppressedTotal = 0

    /// Decides about one warning of `kind` provoked by `peer`.
    mutating func admit(_ kind: Kind, from peer: DomainID, now: NIODeadline) -> Decision {
        let key = Key(peer: peer, kind: kind)
        // One lookup; the window is updated in place (a flood's suppressed warnings
        // cost this and nothing else).
        guard let index = self.windows.index(forKey: key) else {
            if self.windows.count >= Self.maximumKeys { self.evictExpired(now: now) }
            guard self.windows.count < Self.maximumKeys else {
                self.untracked += 1
                self.suppressedTotal += 1
                return .suppress
            }
            self.windows[key] = Window(start: now, logged: 1, suppressed: 0)
            return .log(suppressed: 0)
        }
        if now - self.windows.values[index].start >= Self.interval {
            let suppressed = self.windows.values[index].suppressed
            self.windows.values[index] = Window(start: now, logged: 1, suppressed: 0)
            if suppressed > 0 { self.pending.remove(key) }
            return .log(suppressed: suppressed)
        }
        guard self.windows.values[index].logged < Self.burst else {
            self.windows.values[index].suppressed += 1
            if self.windows.values[index].suppressed == 1 { self.pending.insert(key) }
            self.suppressedTotal += 1
            return .suppress
        }
        self.windows.values[index].logged += 1
        return .log(suppressed: 0)
    }

    /// Some warnings were suppressed and not reported yet.
    var hasPending: Bool { !self.pending.isEmpty }

    /// Windows that ended with suppressed warnings nobody heard of: report them.
    mutating func expired(now: NIODeadline) -> [(key: Key, suppressed: Int)] {
        guard !self.pending.isEmpty else { return [] }
        var reports: [(key: Key, suppressed: Int)] = []
        for key in self.pending {
            guard let window = self.windows[key], now - window.start >= Self.interval else { continue }
            reports.append((key, window.suppressed))
            self.windows[key] = nil
        }
        for report in reports { self.pending.remove(report.key) }
        return reports.sorted {
            ($0.key.peer.rawValue, $0.key.kind.rawValue) < ($1.key.peer.rawValue, $1.key.kind.rawValue)
        }
    }

    private mutating func evictExpired(now: NIODeadline) {
        self.windows = self.windows.filter { now - $0.value.start < Self.interval || self.pending.contains($0.key) }
    }
}
