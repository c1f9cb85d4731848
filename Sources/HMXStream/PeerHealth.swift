// SPDX-License-Identifier: Apache-2.0
import HMXCore
import NIOCore

/// What we know of one peer domain's reachability, as a plain value: our partner ring
/// for it, whether its ring's message size is known, when we last heard from it, and
/// the timing of keepalive pings, ring checks and size queries.
///
/// Argo destroys the rings that name a destroyed domain as partner, and a peer domain
/// that is destroyed and started again leaves no other trace; a peer's gateway may
/// also start after ours. So the partner ring is registered again while it is
/// missing, checked (register with FAIL_EXIST) when the peer falls silent, and the
/// peer's message size is asked for until known.
public struct PeerHealth: Sendable {
    public enum RingState: Sendable, Equatable {
        /// No ring (not registered yet, or gone with the peer's domain).
        case absent
        /// A registration is under way (including its retries).
        case registering
        case registered
    }

    /// What the owner must do.
    public enum Action: Sendable, Equatable {
        /// Register our partner ring for the peer: `attempt` counts quick retries while
        /// the peer domain is starting; `check` registers with FAIL_EXIST (EEXIST means
        /// the ring is still there).
        case registerRing(attempt: Int, check: Bool)
        /// Register again after `delay` (the peer domain is starting: ESRCH).
        case registerRingLater(attempt: Int, delay: TimeAmount)
        /// Ask notify for the size of the peer's ring.
        case queryMessageSize
        /// Send a PING.
        case ping
        /// No answer to keepalives for ``peerTimeout``: the peer is lost.
        case timedOut
    }

    /// How often peers with connections are pinged, and when silence means death.
    public static let keepaliveInterval = TimeAmount.seconds(1)
    public static let peerTimeout = TimeAmount.seconds(4)
    /// A peer with connections that has been silent this long: check our ring for it.
    public static let silenceBeforeRingCheck = TimeAmount.milliseconds(1500)
    /// The quickest a ring is checked again, and the size asked for again.
    static let ringCheckInterval = TimeAmount.seconds(1)
    static let sizeQueryInterval = TimeAmount.milliseconds(100)
    /// Quick registration retries while the peer domain is starting (100, 200, 400,
    /// 800 ms), after which the once-a-second tick takes over.
    static let quickRetries = 4

    /// We register a partner ring for this peer (the configuration names it).
    public var isPartner: Bool
    public private(set) var ring: RingState = .absent
    public private(set) var lastHeard: NIODeadline
    private var lastRingCheck: NIODeadline?
    private var isCheckingRing = false
    private var isQueryingSize = false
    private var lastSizeQuery: NIODeadline?

    public init(isPartner: Bool, now: NIODeadline) {
        self.isPartner = isPartner
        self.lastHeard = now
    }

    public var hasRing: Bool { self.ring == .registered }

    // MARK: - Ring registration

    /// Starts registering the partner ring unless that is under way.
    public mutating func registerIfNeeded(into actions: inout [Action]) {
        guard self.isPartner, self.ring == .absent else { return }
        self.ring = .registering
        actions.append(.registerRing(attempt: 0, check: false))
    }

    /// The registration (or check) succeeded: the ring exists now.
    /// - Returns: true if it did not exist before (it was missing).
    public mutating func ringRegistered(check: Bool) -> Bool {
        if check { self.isCheckingRing = false }
        let wasMissing = self.ring != .registered || check
        self.ring = .registered
        return wasMissing
    }

    /// The registration failed with `errno` (nil: not an Argo error).
    public mutating func ringRegistrationFailed(
        errno: ArgoErrno?,
        attempt: Int,
        check: Bool,
        into actions: inout [Action]
    ) {
        if check {
            self.isCheckingRing = false
            switch errno {
            case .EEXIST?: return  // Still there.
            case .ESRCH?: self.ring = .absent
            default: return
            }
            return
        }
        if errno == .ESRCH, attempt < Self.quickRetries {
            // The peer domain is starting: try again soon.
            actions.append(.registerRingLater(attempt: attempt + 1, delay: .milliseconds(100 << Int64(attempt))))
            return
        }
        self.ring = .absent
    }

    /// The peer's domain is gone (ESRCH on send): so is our partner ring for it.
    public mutating func ringLost() {
        if self.ring == .registered { self.ring = .absent }
    }

    /// Makes sure our partner ring still exists (at most once a second): registering
    /// with FAIL_EXIST changes nothing if it is there and restores it if not.
    public mutating func checkRing(now: NIODeadline, into actions: inout [Action]) {
        guard self.isPartner, self.ring == .registered, !self.isCheckingRing else { return }
        if let last = self.lastRingCheck, now - last < Self.ringCheckInterval { return }
        self.lastRingCheck = now
        self.isCheckingRing = true
        actions.append(.registerRing(attempt: 0, check: true))
    }

    // MARK: - The peer's ring size

    /// Asks for the peer's ring size now (our ring for it appeared, or it restarted).
    public mutating func querySize(now: NIODeadline, into actions: inout [Action]) {
        guard !self.isQueryingSize else { return }
        self.isQueryingSize = true
        self.lastSizeQuery = now
        actions.append(.queryMessageSize)
    }

    /// Asks for the peer's ring size if it is unknown, at most every 100 ms (the
    /// peer's gateway may start after ours: until its ring exists, messages stay small).
    public mutating func querySizeIfUnknown(isKnown: Bool, now: NIODeadline, into actions: inout [Action]) {
        guard !isKnown else { return }
        if let last = self.lastSizeQuery, now - last < Self.sizeQueryInterval { return }
        self.querySize(now: now, into: &actions)
    }

    /// The size query has its answer.
    public mutating func sizeQueryCompleted() {
        self.isQueryingSize = false
    }

    // MARK: - Liveness

    /// A message from the peer arrived.
    public mutating func heard(now: NIODeadline) {
        self.lastHeard = now
    }

    /// Once a keepalive interval: registration retries, size queries, and for a peer
    /// with connections a ping, a ring check when it has been silent, and the verdict
    /// when it has been silent too long.
    public mutating func tick(now: NIODeadline, hasConnections: Bool, isSizeKnown: Bool, into actions: inout [Action]) {
        self.registerIfNeeded(into: &actions)
        if self.hasRing { self.querySizeIfUnknown(isKnown: isSizeKnown, now: now, into: &actions) }
        guard hasConnections else {
            self.lastHeard = now
            return
        }
        if now - self.lastHeard > Self.silenceBeforeRingCheck {
            // Pinged, but no answer for a while: perhaps its answers cannot reach us
            // because our ring for it went with its previous run.
            self.checkRing(now: now, into: &actions)
        }
        if now - self.lastHeard > Self.peerTimeout {
            actions.append(.timedOut)
            return
        }
        actions.append(.ping)
    }
}
