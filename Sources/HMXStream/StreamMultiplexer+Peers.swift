// SPDX-License-Identifier: Apache-2.0
import HMXCore
import NIOCore

// MARK: - Sending

extension StreamMultiplexer {
    /// What became of a message handed to sendv.
    public enum SendOutcome: Sendable, Equatable {
        case delivered
        /// EAGAIN: the hypervisor wakes us when the ring has room.
        case ringFull
        /// Failed for good (nil: not an Argo error, e.g. the link closed).
        case failed(ArgoErrno?)
    }

    /// True if some peer has frames or retries to send.
    public var needsPump: Bool { !self.pumpQueue.isEmpty }

    /// The peers with something to send, in the order they got it.
    public mutating func takePeersToPump() -> [DomainID] {
        guard !self.pumpQueue.isEmpty else { return [] }
        let taken = self.pumpQueue
        self.pumpQueue.removeAll(keepingCapacity: true)
        for domain in taken { self.peers[domain]?.isPumpScheduled = false }
        return taken
    }

    mutating func schedulePump(_ domain: DomainID) {
        guard self.peers.index(forKey: domain) != nil, !self.peers[domain]!.isPumpScheduled else { return }
        self.peers[domain]!.isPumpScheduled = true
        self.pumpQueue.append(domain)
    }

    /// The next message for sendv to `domain`, if one may go now. A peer that lets
    /// frames pile up beyond any well-behaved bound is given up instead.
    public mutating func nextMessage(to domain: DomainID, now: NIODeadline) -> PeerSender.Message? {
        guard self.peers.index(forKey: domain) != nil else { return nil }
        if self.peers[domain]!.sender.isOverflowing {
            let frames = PeerSender.maximumQueuedFrames
            self.peerFailed(domain, .notDraining(queuedFrames: frames), now: now)
            return nil
        }
        let lostBefore = self.peers[domain]!.sender.datagramsLost
        let message = self.peers[domain]!.sender.nextMessage()
        self.statistics.datagramsLost += self.peers[domain]!.sender.datagramsLost - lostBefore
        return message
    }

    /// Messages to `domain` were handed to sendv: connections that stopped reading for
    /// want of queue room read again if it has room now.
    public mutating func pumped(_ domain: DomainID) {
        guard let waiting = self.peers[domain]?.sender.takeConnectionsToWake(), !waiting.isEmpty else { return }
        for key in waiting { self.withConnection(ConnectionID(peer: domain, key: key)) { $0.queueHasRoom(into: &$1) } }
    }

    /// The result of sendv for message `number` to `domain`.
    public mutating func sendCompleted(to domain: DomainID, number: UInt32, _ outcome: SendOutcome, now: NIODeadline) {
        guard self.peers.index(forKey: domain) != nil else { return }
        switch outcome {
        case .delivered:
            guard self.peers[domain]!.sender.sendCompleted(number: number, .delivered) else { return }
            self.peers[domain]!.hasNoRingForUs = false
            self.statistics.messagesSent += 1
            self.schedulePump(domain)
        case .ringFull:
            guard self.peers[domain]!.sender.sendCompleted(number: number, .ringFull) else { return }
            self.statistics.ringFull += 1
            if self.peers[domain]!.waitingForRoomSince == nil { self.peers[domain]!.waitingForRoomSince = now }
        case .failed(let errno):
            // Gone if the peer failed meanwhile (the queue was discarded).
            guard self.peers[domain]!.sender.sendCompleted(number: number, .failed) else { return }
            self.peerFailed(domain, .send(errno), now: now)
        }
    }

    /// The hypervisor signalled an event: rings that were full may have room.
    public mutating func ringsMayHaveRoom() {
        for (domain, peer) in self.peers where peer.sender.ringMayHaveRoom() {
            peer.waitingForRoomSince = nil
            self.schedulePump(domain)
        }
    }

    /// How long a sender waits for the wake-up of a full ring before it tries again
    /// anyway: a wake-up can be lost (the peer's domain was destroyed with our message
    /// pending on its ring, and started again); a ring still full answers EAGAIN again,
    /// which queues a new wake-up.
    static let wakeUpTimeout = TimeAmount.seconds(1)
}

// MARK: - Peer health

extension StreamMultiplexer {
    /// The peers named in the configuration: a partner ring is registered for each.
    public mutating func addPartners(_ domains: Set<DomainID>, now: NIODeadline) {
        for domain in domains.sorted(by: { $0.rawValue < $1.rawValue }) {
            self.ensurePeer(domain, now: now)
            self.peers[domain]!.health.isPartner = true
            var healthActions: [PeerHealth.Action] = []
            self.peers[domain]!.health.registerIfNeeded(into: &healthActions)
            self.execute(healthActions, for: domain, now: now)
        }
    }

    /// What one peer domain costs this gateway now, and its frames handled so far.
    public struct PeerLoad: Sendable, Equatable {
        /// Frames of its messages handled (since this gateway started).
        public var framesHandled: Int
        /// Bytes of its messages waiting to be handled.
        public var inboxBytes: Int
        /// Frames waiting to be sent to it.
        public var queuedFrames: Int
        /// Our partner ring for it.
        public var ring: PeerHealth.RingState
        /// The largest message its ring takes, once learnt (notify's answer).
        public var messageSize: Int?
        /// When it was last heard from (any message).
        public var lastHeard: NIODeadline
    }

    /// The load of `domain`, nil if it never sent or was sent anything.
    public func load(of domain: DomainID) -> PeerLoad? {
        guard let peer = self.peers[domain] else { return nil }
        return PeerLoad(
            framesHandled: peer.framesHandled,
            inboxBytes: peer.inboxBytes,
            queuedFrames: peer.sender.queuedFrames,
            ring: peer.health.ring,
            messageSize: peer.sender.isMessageSizeKnown ? peer.sender.maximumMessageSize : nil,
            lastHeard: peer.health.lastHeard
        )
    }

    /// Number of peer domains this gateway keeps state for.
    public var peerCount: Int { self.peers.count }

    /// True if our partner ring for `domain` is registered.
    public func hasRing(for domain: DomainID) -> Bool { self.peers[domain]?.health.hasRing ?? false }

    /// Our partner ring for `domain` is registered (`check`: it had been gone and is
    /// back). Connections whose OPEN went out before it existed are reset: the peer's
    /// answers could not reach us.
    public mutating func ringRegistered(for domain: DomainID, check: Bool, now: NIODeadline) {
        self.ensurePeer(domain, now: now)
        guard self.peers[domain]!.health.ringRegistered(check: check) else { return }
        self.actions.append(.notice(check ? .ringRestored(domain) : .ringRegistered(domain)))
        for id in self.connections.keys.filter({ $0.peer == domain }) {
            self.withConnection(id) { $0.ringAppeared(into: &$1) }
        }
        var healthActions: [PeerHealth.Action] = []
        self.peers[domain]!.health.querySize(now: now, into: &healthActions)
        self.execute(healthActions, for: domain, now: now)
    }

    /// Registering (or checking) our partner ring for `domain` failed.
    public mutating func ringRegistrationFailed(
        for domain: DomainID,
        errno: ArgoErrno?,
        attempt: Int,
        check: Bool,
        now: NIODeadline
    ) {
        guard self.peers.index(forKey: domain) != nil else { return }
        let hadRing = self.peers[domain]!.health.hasRing
        var healthActions: [PeerHealth.Action] = []
        self.peers[domain]!.health.ringRegistrationFailed(
            errno: errno,
            attempt: attempt,
            check: check,
            into: &healthActions
        )
        if hadRing, !self.peers[domain]!.health.hasRing { self.actions.append(.ringLost(domain)) }
        if healthActions.isEmpty, errno != .ESRCH, errno != .EEXIST || !check {
            self.actions.append(.notice(.ringRegistrationFailed(domain, errno: errno)))
        }
        self.execute(healthActions, for: domain, now: now)
    }

    /// Notify answered the size query for the peer's ring (`nil`: no such ring yet).
    public mutating func messageSizeQueried(for domain: DomainID, maximumMessageSize: Int?) {
        guard self.peers.index(forKey: domain) != nil else { return }
        self.peers[domain]!.health.sizeQueryCompleted()
        if let size = maximumMessageSize, size >= 64 {
            self.peers[domain]!.sender.peerRingChanged(maximumMessageSize: size)
            // Datagrams may have waited for the size.
            if self.peers[domain]!.sender.queuedFrames > 0 { self.schedulePump(domain) }
        }
    }

    /// Once a keepalive interval: pings, dead peers, missing rings, size queries, idle
    /// connections and unanswered OPENs.
    public mutating func tick(now: NIODeadline) {
        for (domain, peer) in self.peers {
            peer.hasNoRingForUs = false
            guard let since = peer.waitingForRoomSince, now - since >= Self.wakeUpTimeout else { continue }
            peer.waitingForRoomSince = nil
            if peer.sender.ringMayHaveRoom() { self.schedulePump(domain) }
        }
        for domain in self.peers.keys.sorted(by: { $0.rawValue < $1.rawValue }) {
            guard let peer = self.peers[domain] else { continue }
            var healthActions: [PeerHealth.Action] = []
            self.peers[domain]!.health.tick(
                now: now,
                hasConnections: peer.connectionCount > 0,
                isSizeKnown: peer.sender.isMessageSizeKnown,
                into: &healthActions
            )
            self.execute(healthActions, for: domain, now: now)
        }
        for id in self.connections.compactMap({ $0.value.hasTimer ? $0.key : nil }) {
            self.withConnection(id) { $0.tick(now: now, into: &$1) }
        }
    }

    mutating func execute(_ healthActions: [PeerHealth.Action], for domain: DomainID, now: NIODeadline) {
        for action in healthActions {
            switch action {
            case .registerRing(let attempt, let check):
                self.actions.append(.registerRing(domain, attempt: attempt, check: check))
            case .registerRingLater(let attempt, let delay):
                self.actions.append(.registerRingLater(domain, attempt: attempt, delay: delay))
            case .queryMessageSize:
                self.actions.append(.queryMessageSize(domain))
            case .ping:
                self.nextNonce &+= 1
                self.enqueue(.ping(instance: self.instance, nonce: self.nextNonce), to: domain)
            case .timedOut:
                self.peerFailed(domain, .keepaliveTimeout, now: now)
            }
        }
    }

    /// Sending to a peer failed for good, or it stopped answering: every connection
    /// with it ends, its queue is dropped, and its next message starts the numbering
    /// again.
    mutating func peerFailed(_ domain: DomainID, _ cause: PeerFailure, now: NIODeadline) {
        let errno: ArgoErrno?
        if case .send(let sendErrno) = cause { errno = sendErrno } else { errno = nil }
        let outcome: ConnectionOutcome
        switch errno {
        case .ESRCH?: outcome = .peerNotRunning
        case .ECONNREFUSED?: outcome = .noRing
        case .EACCES?, .EPERM?: outcome = .deniedByHypervisor
        default: outcome = .peerLost
        }
        let affected = self.connections.keys.filter { $0.peer == domain }
        self.actions.append(.notice(.peerFailed(domain, outcome, cause: cause, connections: affected.count)))
        // Connections still opening never reached the peer: they count as refused.
        for id in affected { self.terminate(id, outcome, resetReason: nil) }
        let lostBefore = self.peers[domain]!.sender.datagramsLost
        _ = self.peers[domain]!.sender.discard()
        self.statistics.datagramsLost += self.peers[domain]!.sender.datagramsLost - lostBefore
        self.peers[domain]!.order.reset()
        if errno == .ECONNREFUSED { self.peers[domain]!.hasNoRingForUs = true }
        if errno == .ESRCH {
            // The peer domain is gone, and with it our partner ring for it.
            if self.peers[domain]!.health.hasRing { self.actions.append(.ringLost(domain)) }
            self.peers[domain]!.health.ringLost()
        } else if errno != .EACCES, errno != .EPERM {
            // The peer is silent or has no ring for us: its domain may have been
            // destroyed and started again, taking our partner ring for it along.
            var healthActions: [PeerHealth.Action] = []
            self.peers[domain]!.health.checkRing(now: now, into: &healthActions)
            self.execute(healthActions, for: domain, now: now)
        }
    }
}

// MARK: - Datagram flows

extension StreamMultiplexer {
    /// Why a datagram was not queued for a peer (it is dropped and counted: datagrams
    /// are lossy, and a flow never holds up a stream or another flow).
    public enum DatagramDrop: String, Sendable, CaseIterable {
        /// Larger than one message to the peer takes (or than a DGRAM frame may be).
        case tooLarge = "too_large"
        /// What waits for the peer is at its bound (the peer's ring is full or slow).
        case queueFull = "queue_full"
    }

    /// Queues one datagram of the flow `key` for `domain`.
    /// - Returns: nil if queued, else why it was dropped.
    public mutating func sendDatagram(
        _ key: StreamFrame.ConnectionKey,
        to domain: DomainID,
        servicePort: UInt32,
        _ payload: ByteBuffer,
        now: NIODeadline
    ) -> DatagramDrop? {
        self.ensurePeer(domain, now: now)
        let peer = self.peers[domain]!
        let frame = StreamFrame.datagram(key: key, servicePort: servicePort, payload: payload)
        // While the size of the peer's ring is unknown, a datagram larger than the
        // provisional message size waits in the queue for it (see PeerSender).
        guard payload.readableBytes <= StreamFrame.maximumDatagramLength,
            !peer.sender.isMessageSizeKnown
                || PeerSender.sequenceLength + frame.encodedLength <= peer.sender.messageLimit
        else { return .tooLarge }
        guard peer.sender.hasQueueRoom else { return .queueFull }
        self.statistics.datagramsSent += 1
        self.statistics.bytesToPeer += payload.readableBytes
        self.enqueue(frame, to: peer, domain)
        return nil
    }

    /// Tells `domain` that the flow `key` ended (nil) or is refused.
    public mutating func closeDatagramFlow(
        _ key: StreamFrame.ConnectionKey,
        to domain: DomainID,
        reason: StreamFrame.RefuseReason?,
        now: NIODeadline
    ) {
        self.ensurePeer(domain, now: now)
        self.enqueue(.datagramClose(key: key, reason: reason), to: domain)
    }
}
