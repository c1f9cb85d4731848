// SPDX-License-Identifier: Apache-2.0
import HMXCore
import NIOCore

/// The HMX stream protocol of one gateway, as a plain value: the connection table, id
/// allocation, frame dispatch, malformed input, peer restarts, and per peer its
/// ``PeerSender``, ``PeerHealth``, ``MessageOrder`` and inbox.
///
/// Every method is an event; what it means for sockets, the hypervisor and the log is
/// appended to ``actions`` for the owner to execute. Nothing here calls out, so no
/// call comes back in while an event is handled.
public struct StreamMultiplexer {
    public struct Configuration: Sendable, Equatable {
        /// The window each connection grants to begin with.
        public var window: Int
        /// The largest a connection's window grows to.
        public var maximumWindow: Int
        /// Total growth of all windows together.
        public var windowPool: Int
        /// `limits.peer_in_flight`, if set.
        public var peerInFlight: Int?
        /// Frames of one peer handled per round (see ``processInbound(now:)``).
        public var framesPerRound: Int

        public init(
            window: Int,
            maximumWindow: Int,
            windowPool: Int,
            peerInFlight: Int? = nil,
            framesPerRound: Int = 128
        ) {
            self.window = window
            self.maximumWindow = maximumWindow
            self.windowPool = windowPool
            self.peerInFlight = peerInFlight
            self.framesPerRound = framesPerRound
        }
    }

    /// What a multiplexer keeps per peer domain: its values, in one box, so that the
    /// many reads and updates per message reach them in place (a dictionary of large
    /// structs would copy one out for every read).
    final class Peer {
        enum InboundItem: Sendable {
            case message(ByteBuffer)
            /// The peer's gateway runs again, as this instance.
            case restarted(instance: UInt64)
            case malformed(MalformedMessage)
        }

        var sender: PeerSender
        var health: PeerHealth
        var order = MessageOrder()
        /// Messages in order, not yet handled (the current one partly read).
        var inbox = CircularBuffer<InboundItem>()
        var inboxBytes = 0
        var framesHandled = 0
        /// A send to the peer found no ring for us (ECONNREFUSED), and none succeeded
        /// since nor did a tick pass: answers to it are dropped until then.
        var hasNoRingForUs = false
        /// The round ``budget`` is for, and the frames the peer may still have handled
        /// in it.
        var budgetRound = -1
        var budget = 0
        var connectionCount = 0
        /// The id of our next connection to this peer. Each run of the gateway starts
        /// at its own point (from its instance id): frames the peer sent to our
        /// previous run, still on their way when we restarted, then name connections
        /// we do not have (answered with RESET), not new ones that took the same id.
        var nextLocalID: UInt32
        init(sender: PeerSender, health: PeerHealth, nextLocalID: UInt32) {
            self.sender = sender
            self.health = health
            self.nextLocalID = nextLocalID
        }
        /// In ``StreamMultiplexer/inboundTurns`` or ``StreamMultiplexer/pumpQueue``.
        var isInboundScheduled = false
        var isPumpScheduled = false
        /// When a message to this peer found its ring full and we began waiting for the
        /// wake-up (nil: not waiting).
        var waitingForRoomSince: NIODeadline?
    }

    public var configuration: Configuration {
        didSet {
            for domain in self.peers.keys {
                self.peers[domain]!.sender.configuredInFlight = self.configuration.peerInFlight
            }
        }
    }
    /// This gateway's instance id: a peer that sees it change knows we restarted.
    public let instance: UInt64
    public internal(set) var connections: [ConnectionID: StreamConnectionState] = [:]
    var peers: [DomainID: Peer] = [:]
    /// Peers with inbound items, in round-robin order.
    var inboundTurns = CircularBuffer<DomainID>()
    /// The current round of inbound work (see ``startRound()``).
    var round = 0
    /// Peers with frames to send.
    var pumpQueue: [DomainID] = []
    /// The nonce of the last PING.
    var nextNonce: UInt64 = 0
    /// New OPENs are refused (the gateway is shutting down).
    public internal(set) var isAccepting = true
    public var statistics = StreamStatistics()
    /// What the owner must do; take it with ``swapActions(_:)``.
    public internal(set) var actions: [StreamAction] = []
    /// Reused storage for a connection's actions.
    private var connectionActions: [StreamConnectionState.Action] = []

    public init(configuration: Configuration, instance: UInt64) {
        self.configuration = configuration
        self.instance = instance
    }

    /// Exchanges the accumulated actions for `other` (an empty array whose storage the
    /// owner reuses): the owner then executes what it got.
    public mutating func swapActions(_ other: inout [StreamAction]) {
        swap(&other, &self.actions)
    }

    /// True if actions wait for the owner.
    public var hasActions: Bool { !self.actions.isEmpty }

    public var activeConnectionCount: Int { self.connections.count }

    /// What the window pool still has for connections whose window should grow.
    var windowPoolFree: Int { max(0, self.configuration.windowPool - self.statistics.windowPoolInUse) }

    /// The peer's state, created on first contact.
    mutating func ensurePeer(_ domain: DomainID, now: NIODeadline) {
        guard self.peers.index(forKey: domain) == nil else { return }
        let mixed = (self.instance ^ UInt64(domain.rawValue)) &* 0x9E37_79B9_7F4A_7C15
        self.peers[domain] = Peer(
            sender: PeerSender(instance: self.instance, configuredInFlight: self.configuration.peerInFlight),
            health: PeerHealth(isPartner: false, now: now),
            nextLocalID: UInt32(truncatingIfNeeded: mixed >> 32)
        )
    }

    /// Runs one event on a connection and executes its actions.
    mutating func withConnection(
        _ id: ConnectionID,
        _ body: (inout StreamConnectionState, inout [StreamConnectionState.Action]) -> Void
    ) {
        var actions: [StreamConnectionState.Action] = []
        swap(&actions, &self.connectionActions)
        defer {
            actions.removeAll(keepingCapacity: true)
            swap(&actions, &self.connectionActions)
        }
        // In place: a connection's state is a large value, not copied out and back.
        guard let index = self.connections.index(forKey: id) else { return }
        body(&self.connections.values[index], &actions)
        self.apply(actions, of: id)
    }

    private mutating func apply(_ connectionActions: [StreamConnectionState.Action], of id: ConnectionID) {
        for action in connectionActions {
            switch action {
            case .send(let frame):
                if let payload = frame.dataPayload { self.statistics.bytesToPeer += payload.readableBytes }
                self.enqueue(frame, to: id.peer)
            case .write(let bytes):
                self.statistics.bytesFromPeer += bytes.readableBytes
                self.actions.append(.write(id, bytes))
            case .read:
                self.actions.append(.read(id))
            case .shutdownOutput:
                self.actions.append(.shutdownOutput(id))
            case .abort:
                self.actions.append(.abort(id))
            case .waitForQueueRoom:
                self.peers[id.peer]?.sender.waitForQueueRoom(id.key)
            case .opened:
                self.actions.append(.opened(id))
            case .ended(let end):
                self.actions.append(.ended(id, end))
            case .windowGrew(let bytes):
                self.statistics.windowGrowths += 1
                self.statistics.windowPoolInUse += bytes
            case .remove:
                self.remove(id)
            }
        }
    }

    mutating func add(_ state: StreamConnectionState, as id: ConnectionID) {
        self.connections[id] = state
        self.peers[id.peer]?.connectionCount += 1
    }

    private mutating func remove(_ id: ConnectionID) {
        guard let state = self.connections.removeValue(forKey: id) else { return }
        self.statistics.windowPoolInUse -= state.flow.growth
        self.peers[id.peer]?.connectionCount -= 1
        self.actions.append(.removed(id))
    }

    /// Queues a frame for the peer; it goes out with the next pump.
    mutating func enqueue(_ frame: StreamFrame, to domain: DomainID) {
        guard let peer = self.peers[domain] else { return }
        self.enqueue(frame, to: peer, domain)
    }

    /// ``enqueue(_:to:)`` for a caller that holds the peer already (one lookup less per
    /// frame: a flood of PINGs is answered at this cost).
    mutating func enqueue(_ frame: StreamFrame, to peer: Peer, _ domain: DomainID) {
        if peer.hasNoRingForUs {
            // Answers to what a domain without a ring for us sent could only fail again
            // (a domain may write to our wildcard ring without one): PONGs, refusals of
            // its OPENs, RESETs of connections we do not have. Ends of our own
            // connections still go.
            switch frame {
            case .pong, .refuse, .reset(_, .unknownConnection), .datagramClose:
                return
            default:
                break
            }
        }
        peer.sender.enqueue(frame)
        if !peer.isPumpScheduled {
            peer.isPumpScheduled = true
            self.pumpQueue.append(domain)
        }
    }

    func sendLimits(of domain: DomainID) -> (maximumData: Int, queueHasRoom: Bool) {
        guard let peer = self.peers[domain] else { return (StreamFrame.maximumDataLength, true) }
        return (peer.sender.maximumDataLength, peer.sender.hasQueueRoom)
    }
}

// MARK: - Local sockets

extension StreamMultiplexer {
    public mutating func localRead(_ id: ConnectionID, _ bytes: ByteBuffer, now: NIODeadline) {
        let maximumData = self.sendLimits(of: id.peer).maximumData
        self.withConnection(id) { $0.localRead(bytes, maximumData: maximumData, now: now, into: &$1) }
    }

    public mutating func localReadComplete(_ id: ConnectionID) {
        let queueHasRoom = self.sendLimits(of: id.peer).queueHasRoom
        self.withConnection(id) { $0.localReadComplete(queueHasRoom: queueHasRoom, into: &$1) }
    }

    public mutating func localInputClosed(_ id: ConnectionID) {
        self.withConnection(id) { $0.localInputClosed(into: &$1) }
    }

    public mutating func localClosed(_ id: ConnectionID, error: Bool) {
        self.withConnection(id) { $0.localClosed(error: error, into: &$1) }
    }

    public mutating func localWriteCompleted(_ id: ConnectionID, count: Int, now: NIODeadline) {
        let budget = self.windowPoolFree
        self.withConnection(id) { $0.localWriteCompleted(count, now: now, budget: budget, into: &$1) }
    }

    /// Opens a connection to the peer's export at `servicePort` (an import's client
    /// connected): OPEN goes out with the next pump.
    public mutating func open(
        to peer: DomainID,
        servicePort: UInt32,
        records: Bool = false,
        caller: ByteBuffer? = nil,
        idleTimeout: TimeAmount?,
        openTimeout: TimeAmount?,
        now: NIODeadline
    ) -> ConnectionID {
        self.ensurePeer(peer, now: now)
        var id = self.peers[peer]!.nextLocalID
        while id == 0
            || self.connections.index(forKey: ConnectionID(peer: peer, key: .init(id: id, openedLocally: true))) != nil
        {
            id &+= 1
        }
        self.peers[peer]!.nextLocalID = id &+ 1
        let connection = ConnectionID(peer: peer, key: .init(id: id, openedLocally: true))
        let state = StreamConnectionState.opening(
            key: connection.key,
            window: self.configuration.window,
            maximumWindow: self.configuration.maximumWindow,
            now: now,
            idleTimeout: idleTimeout,
            openTimeout: openTimeout,
            ringExists: self.peers[peer]!.health.hasRing
        )
        self.add(state, as: connection)
        self.enqueue(
            .open(
                id: id,
                servicePort: servicePort,
                initialCredit: UInt32(self.configuration.window),
                instance: self.instance,
                records: records,
                caller: caller
            ),
            to: peer
        )
        return connection
    }

    /// The export's target is connected: ACCEPT.
    public mutating func dialSucceeded(_ id: ConnectionID) {
        let (_, queueHasRoom) = self.sendLimits(of: id.peer)
        let instance = self.instance
        self.withConnection(id) { $0.dialSucceeded(instance: instance, queueHasRoom: queueHasRoom, into: &$1) }
    }

    /// The gateway refuses the peer's OPEN, or the target could not be reached.
    public mutating func refuse(_ id: ConnectionID, _ reason: StreamFrame.RefuseReason) {
        self.withConnection(id) { $0.refuse(reason, into: &$1) }
    }

    /// Resets the connection after `timeout` without traffic.
    public mutating func setIdleTimeout(_ id: ConnectionID, _ timeout: TimeAmount) {
        self.connections[id]?.idleTimeout = timeout
    }

    /// Ends a connection from our side (idle, shutdown...).
    public mutating func terminate(
        _ id: ConnectionID,
        _ outcome: ConnectionOutcome,
        resetReason: StreamFrame.ResetReason?
    ) {
        self.withConnection(id) { $0.terminate(outcome, resetReason: resetReason, into: &$1) }
    }

    /// From now on the peers' OPENs are refused (shutting down).
    public mutating func stopAccepting() {
        self.isAccepting = false
    }

    /// Ends every connection (the gateway stops).
    public mutating func terminateAll(_ outcome: ConnectionOutcome, resetReason: StreamFrame.ResetReason?) {
        for id in Array(self.connections.keys) { self.terminate(id, outcome, resetReason: resetReason) }
    }
}
