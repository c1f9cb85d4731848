// SPDX-License-Identifier: Apache-2.0
import HMXCore
import NIOCore

/// What a ``StreamDriver``'s owner does with the connections' sockets and decisions.
/// Called on the driver's event loop; it may call the driver back (the driver queues
/// what that produces and executes it in order).
public protocol StreamDriverDelegate: AnyObject {
    /// The peer asks for the export at `servicePort` over connection `id`. Refuse it,
    /// or dial the export's target and report with ``StreamDriver/dialSucceeded(_:)``
    /// or ``StreamDriver/refuse(_:_:)``.
    func admit(_ id: ConnectionID, servicePort: UInt32) -> StreamDriver.Admission
    /// The same for an OPEN that says whether the opener's socket carries records
    /// (SEQPACKET): only an export of the same kind may take it. By default, one with
    /// records finds no such service.
    func admit(_ id: ConnectionID, servicePort: UInt32, records: Bool) -> StreamDriver.Admission
    /// The same for an OPEN that may carry a caller block (who a caller on another
    /// host is, as the opener asserts). By default the block is not looked at.
    func admit(_ id: ConnectionID, servicePort: UInt32, records: Bool, caller: ByteBuffer?) -> StreamDriver.Admission
    /// A lifecycle action for one connection, or a notice for the log: `.opened`,
    /// `.ended`, `.removed`, `.openRefused`, `.notice`. (Socket actions go to the
    /// connection's ``StreamSocket``; ring and link actions are the driver's.)
    func perform(_ action: StreamAction)
    /// A turn of work ended (sockets are flushed): update metrics.
    func turnEnded(_ statistics: StreamStatistics)
}

extension StreamDriverDelegate {
    public func admit(_ id: ConnectionID, servicePort: UInt32, records: Bool) -> StreamDriver.Admission {
        records ? .refuse(.noSuchService) : self.admit(id, servicePort: servicePort)
    }

    public func admit(
        _ id: ConnectionID,
        servicePort: UInt32,
        records: Bool,
        caller: ByteBuffer?
    ) -> StreamDriver.Admission {
        self.admit(id, servicePort: servicePort, records: records)
    }
}

/// Runs a ``StreamMultiplexer`` over an ``HMXLink`` on the link's event loop: executes
/// the multiplexer's ring and send actions, drains the rings in turns, keeps the
/// keepalive timer, and hands socket actions to its delegate.
///
/// ```
///  StreamSocket ──events──▶ StreamDriver ──▶ StreamMultiplexer ──▶ StreamConnectionState
///                                │                 │  └────────▶ PeerSender ── sendv ──▶ HMXLink
///      ◀── write/read/close ─────┘◀── actions ─────┘
///  HMXLink event ──▶ StreamRings.drain ──▶ multiplexer inbox ──▶ processInbound (per-peer budget)
/// ```
///
/// Work is done in turns: each turn drains the rings (a peer's partner ring only while
/// its inbox has room), handles up to a budget of frames per peer round-robin, sends
/// the NULL notify if a sender may be waiting, and flushes. If work is left, the next
/// turn runs after the event loop has served its sockets, so one flooding peer costs
/// only its own share.
public final class StreamDriver {
    public enum Admission: Sendable, Equatable {
        /// Dial the target; the delegate reports the result. A connection without
        /// traffic for `idleTimeout` is reset.
        case dial(idleTimeout: TimeAmount? = nil)
        case refuse(StreamFrame.RefuseReason)
    }

    public struct Configuration: Sendable, Equatable {
        /// The Argo port of the gateway protocol (the same on every gateway).
        public var port: HMXPort
        /// Bytes of each receive ring.
        public var ringSize: UInt32
        public var multiplexer: StreamMultiplexer.Configuration

        public init(port: HMXPort, ringSize: UInt32, multiplexer: StreamMultiplexer.Configuration) {
            self.port = port
            self.ringSize = ringSize
            self.multiplexer = multiplexer
        }
    }

    public let link: any HMXLink
    public let eventLoop: any EventLoop
    public private(set) var configuration: Configuration
    public weak var delegate: (any StreamDriverDelegate)?
    var multiplexer: StreamMultiplexer
    var rings = StreamRings()
    /// Each connection's local end, once attached.
    var sockets: [ConnectionID: any StreamSocket] = [:]
    /// Sockets written to in this turn, flushed at its end.
    var needsFlush: [any StreamSocket] = []
    /// Promises of partner rings' first answers (``start(partners:wildcard:)``).
    var firstAnswers: [DomainID: EventLoopPromise<Void>] = [:]
    var spareActions: [StreamAction] = []
    var isExecuting = false
    var isTurnScheduled = false
    var isFollowUpScheduled = false
    var isPumpScheduled = false
    var isPumping = false
    var timer: RepeatedTask?
    public private(set) var isStopped = false
    /// Runs its argument on the event loop after the I/O that is ready now has been
    /// served; the driver continues left-over work with it. Without it (tests on an
    /// `EmbeddedEventLoop`), a task on the loop. A SwiftNIO loop runs the tasks that
    /// its tasks queue within the same tick, before it looks at its sockets again: a
    /// driver that queued its next turn as a task while a peer kept its inbox full
    /// would keep the loop from every socket.
    public var yieldToIO: ((@escaping () -> Void) -> Void)?

    public init(link: any HMXLink, configuration: Configuration, instance: UInt64 = .random(in: 1...UInt64.max)) {
        self.link = link
        self.eventLoop = link.eventLoop
        self.configuration = configuration
        self.multiplexer = StreamMultiplexer(configuration: configuration.multiplexer, instance: instance)
    }

    public var instance: UInt64 { self.multiplexer.instance }
    public var statistics: StreamStatistics { self.multiplexer.statistics }
    public var activeConnectionCount: Int { self.multiplexer.activeConnectionCount }
    public var now: NIODeadline { self.eventLoop.now }

    /// The multiplexer's configuration (a reload).
    public func update(_ configuration: StreamMultiplexer.Configuration) {
        self.configuration.multiplexer = configuration
        self.multiplexer.configuration = configuration
    }

    // MARK: - Start and stop

    /// Registers the partner rings (and the wildcard ring if asked) and starts the
    /// keepalive timer.
    /// - Returns: a future that succeeds once every partner ring has had its first
    ///   answer from the hypervisor, whatever it is: an OPEN sent before our ring for
    ///   a peer exists gets no answer, so listeners should wait for this.
    public func start(partners: Set<DomainID>, wildcard: Bool) -> EventLoopFuture<Void> {
        self.eventLoop.preconditionInEventLoop()
        self.link.setEventHandler { [loop = self.eventLoop, bound = NIOLoopBound(self, eventLoop: self.eventLoop)] in
            loop.assertInEventLoop()
            bound.value.linkEvent()
        }
        let bound = NIOLoopBound(self, eventLoop: self.eventLoop)
        self.timer = self.eventLoop.scheduleRepeatedTask(
            initialDelay: PeerHealth.keepaliveInterval,
            delay: PeerHealth.keepaliveInterval
        ) { _ in
            bound.value.tick()
        }
        let answers = self.addPartners(partners)
        if wildcard { self.registerWildcardRing() }
        return EventLoopFuture.andAllComplete(answers, on: self.eventLoop)
    }

    /// Registers partner rings for `domains` (those not registered yet).
    /// - Returns: futures of their first answers.
    @discardableResult
    public func addPartners(_ domains: Set<DomainID>) -> [EventLoopFuture<Void>] {
        let new = domains.filter { !self.multiplexer.hasRing(for: $0) && self.firstAnswers[$0] == nil }
        let futures = new.map { domain in
            let promise = self.eventLoop.makePromise(of: Void.self)
            self.firstAnswers[domain] = promise
            return promise.futureResult
        }
        self.run { $0.addPartners(domains, now: self.now) }
        return futures
    }

    /// Registers the wildcard ring unless it is there.
    public func registerWildcardRing() {
        guard !self.rings.hasWildcardRing, !self.isStopped else { return }
        let configuration = self.configuration
        self.link.registerRing(
            port: configuration.port,
            partner: .any,
            length: configuration.ringSize,
            failIfExists: false
        )
        .assumeIsolated().whenComplete { result in
            switch result {
            case .success(let ring):
                self.rings.add(ring)
            case .failure(let error):
                self.delegate?.perform(
                    .notice(.wildcardRingFailed(errno: (error as? HMXError)?.errno, error: "\(error)"))
                )
            }
        }
    }

    /// New OPENs are refused from now on.
    public func stopAccepting() {
        self.multiplexer.stopAccepting()
    }

    /// Resets every connection, stops the timer and unregisters the rings.
    public func stop() {
        guard !self.isStopped else { return }
        self.run { $0.terminateAll(.shuttingDown, resetReason: .shuttingDown) }
        self.pump()
        self.isStopped = true
        self.timer?.cancel()
        self.timer = nil
        for ring in self.rings.all { _ = self.link.unregisterRing(ring) }
        self.rings.removeAll()
        for promise in self.firstAnswers.values { promise.succeed(()) }
        self.firstAnswers.removeAll()
    }
}

// MARK: - Events from the owner

extension StreamDriver {
    /// The connection's local end: the driver writes, reads, closes it from now on.
    public func attach(_ socket: any StreamSocket, to id: ConnectionID) {
        guard self.multiplexer.connections[id] != nil else { return }
        self.sockets[id] = socket
    }

    /// Opens a connection to the peer's export at `servicePort`.
    public func open(
        to peer: DomainID,
        servicePort: UInt32,
        records: Bool = false,
        caller: ByteBuffer? = nil,
        idleTimeout: TimeAmount?,
        openTimeout: TimeAmount?
    ) -> ConnectionID {
        var id: ConnectionID?
        self.run {
            id = $0.open(
                to: peer,
                servicePort: servicePort,
                records: records,
                caller: caller,
                idleTimeout: idleTimeout,
                openTimeout: openTimeout,
                now: self.now
            )
        }
        return id!
    }

    /// Sends one datagram of the flow `id` (``StreamMultiplexer/sendDatagram(_:to:servicePort:_:now:)``).
    /// - Returns: nil if queued, else why it was dropped.
    public func sendDatagram(
        _ id: ConnectionID,
        servicePort: UInt32,
        _ payload: ByteBuffer
    ) -> StreamMultiplexer.DatagramDrop? {
        var drop: StreamMultiplexer.DatagramDrop?
        self.run { drop = $0.sendDatagram(id.key, to: id.peer, servicePort: servicePort, payload, now: self.now) }
        return drop
    }

    /// Tells the peer that the flow `id` ended (nil) or is refused.
    public func closeDatagramFlow(_ id: ConnectionID, reason: StreamFrame.RefuseReason?) {
        self.run { $0.closeDatagramFlow(id.key, to: id.peer, reason: reason, now: self.now) }
    }

    public func localRead(_ id: ConnectionID, _ bytes: ByteBuffer) {
        self.run { $0.localRead(id, bytes, now: self.now) }
    }

    public func localReadComplete(_ id: ConnectionID) {
        self.run { $0.localReadComplete(id) }
    }

    /// ``localRead(_:_:)`` then ``localReadComplete(_:)`` in one run: a read burst of
    /// one read (the glue reads one buffer per burst), the actions executed once.
    public func localReadAndComplete(_ id: ConnectionID, _ bytes: ByteBuffer) {
        self.run {
            $0.localRead(id, bytes, now: self.now)
            $0.localReadComplete(id)
        }
    }

    public func localInputClosed(_ id: ConnectionID) {
        self.run { $0.localInputClosed(id) }
    }

    public func localClosed(_ id: ConnectionID, error: Bool) {
        self.run { $0.localClosed(id, error: error) }
    }

    public func localWriteCompleted(_ id: ConnectionID, count: Int) {
        self.run { $0.localWriteCompleted(id, count: count, now: self.now) }
    }

    public func dialSucceeded(_ id: ConnectionID) {
        self.run { $0.dialSucceeded(id) }
    }

    public func refuse(_ id: ConnectionID, _ reason: StreamFrame.RefuseReason) {
        self.run { $0.refuse(id, reason) }
    }

    public func terminate(_ id: ConnectionID, _ outcome: ConnectionOutcome, resetReason: StreamFrame.ResetReason?) {
        self.run { $0.terminate(id, outcome, resetReason: resetReason) }
    }

    /// The connection's state (for tests and diagnostics).
    public func connection(_ id: ConnectionID) -> StreamConnectionState? { self.multiplexer.connections[id] }

    /// True if our partner ring for `domain` is registered.
    public func hasRing(for domain: DomainID) -> Bool { self.multiplexer.hasRing(for: domain) }

    /// The wildcard ring is registered.
    public var hasWildcardRing: Bool { self.rings.hasWildcardRing }

    /// Every connection's state (for tests and diagnostics).
    public var connections: [ConnectionID: StreamConnectionState] { self.multiplexer.connections }

    /// What `domain` costs this gateway (see ``StreamMultiplexer/PeerLoad``).
    public func load(of domain: DomainID) -> StreamMultiplexer.PeerLoad? { self.multiplexer.load(of: domain) }

    /// Number of peer domains this gateway keeps state for.
    public var peerCount: Int { self.multiplexer.peerCount }
}
