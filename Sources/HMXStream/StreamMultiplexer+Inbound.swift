// SPDX-License-Identifier: Apache-2.0
import HMXCore
import NIOCore

// MARK: - Messages from the rings

extension StreamMultiplexer {
    /// Largest backlog of unhandled messages (bytes) a peer may have before the rings
    /// it writes to are no longer drained for it (its sends then find them full).
    public static let maximumInboxBytes = 1 << 20

    /// A message a peer's gateway wrote to one of our rings (`type` is the Argo message
    /// type). Its SEQUENCE frame puts it in order; messages in order join the peer's
    /// inbox, to be handled by ``processInbound()``.
    public mutating func received(_ message: ByteBuffer, type: UInt32, from domain: DomainID, now: NIODeadline) {
        self.ensurePeer(domain, now: now)
        let peer = self.peers[domain]!
        self.statistics.messagesReceived += 1
        peer.health.heard(now: now)
        // A message from the peer's gateway: its ring for us most likely exists now.
        var healthActions: [PeerHealth.Action] = []
        let isKnown = peer.sender.isMessageSizeKnown
        peer.health.querySizeIfUnknown(isKnown: isKnown, now: now, into: &healthActions)
        self.execute(healthActions, for: domain, now: now)
        guard type == StreamFrame.messageType else {
            return self.inboxAppend(.malformed(.notStreamType(type)), for: domain)
        }
        var buffer = message
        let delivery: MessageOrder.Delivery
        do {
            guard case .sequence(let number, let base, let instance) = try StreamFrame.parse(&buffer) else {
                return self.inboxAppend(.malformed(.noSequenceFirst), for: domain)
            }
            delivery = try peer.order.receive(
                number: number,
                base: base,
                instance: instance,
                message: buffer
            )
        } catch let error as StreamFrame.ParseError {
            return self.inboxAppend(.malformed(.frame(error)), for: domain)
        } catch let violation as MessageOrder.Violation {
            return self.inboxAppend(.malformed(.order(violation)), for: domain)
        } catch {
            return self.inboxAppend(.malformed(.noSequenceFirst), for: domain)
        }
        if delivery.messages.isEmpty { self.statistics.outOfOrder += 1 }
        if delivery.peerRestarted {
            self.inboxAppend(.restarted(instance: peer.order.instance!), for: domain)
        }
        for message in delivery.messages { self.inboxAppend(.message(message), for: domain) }
    }

    private mutating func inboxAppend(_ item: Peer.InboundItem, for domain: DomainID) {
        let peer = self.peers[domain]!
        if case .malformed = item {
            // Its numbering starts again with its next message.
            peer.order.reset()
        }
        if case .message(let buffer) = item { peer.inboxBytes += buffer.readableBytes }
        peer.inbox.append(item)
        if !peer.isInboundScheduled {
            peer.isInboundScheduled = true
            self.inboundTurns.append(domain)
        }
    }

    /// True if the peer's unhandled messages are at or over ``maximumInboxBytes``:
    /// its partner ring waits (its sends find it full, which costs others nothing).
    public func isInboxFull(of domain: DomainID) -> Bool {
        (self.peers[domain]?.inboxBytes ?? 0) >= Self.maximumInboxBytes
    }

    /// True if the peer has unhandled messages.
    public func hasInbox(_ domain: DomainID) -> Bool {
        !(self.peers[domain]?.inbox.isEmpty ?? true)
    }

    /// True if some peer has unhandled messages (another round is needed).
    public var hasInboundWork: Bool { !self.inboundTurns.isEmpty }

    /// A new round of inbound work: every peer's budget is whole again. The owner
    /// starts one each time its event loop has served the I/O that was ready, so that a
    /// peer's share is per loop iteration, however many turns (link events) the
    /// iteration has.
    public mutating func startRound() {
        self.round &+= 1
    }

    /// Handles the peers' messages, round-robin, each peer's frames within what is left
    /// of its ``Configuration/framesPerRound`` in this round: one peer's flood costs only
    /// its own share. While ``hasInboundWork``, start a new round (after the loop's
    /// I/O) and call again.
    public mutating func processInbound(now: NIODeadline) {
        for _ in 0..<self.inboundTurns.count {
            guard let domain = self.inboundTurns.popFirst() else { return }
            if let peer = self.peers[domain] {
                if peer.budgetRound != self.round {
                    peer.budgetRound = self.round
                    peer.budget = self.configuration.framesPerRound
                }
                if peer.budget > 0 { self.process(domain, now: now) }
            }
            if self.peers[domain]?.inbox.isEmpty ?? true {
                self.peers[domain]?.isInboundScheduled = false
            } else {
                self.inboundTurns.append(domain)
            }
        }
    }

    /// Handles the peer's inbox within its budget.
    private mutating func process(_ domain: DomainID, now: NIODeadline) {
        let peer = self.peers[domain]!
        while peer.budget > 0, let item = self.peers[domain]?.inbox.first {
            switch item {
            case .restarted(let instance):
                peer.budget -= 1
                self.peers[domain]!.inbox.removeFirst()
                self.peerRestarted(domain, as: instance, now: now)
            case .malformed(let reason):
                peer.budget -= 1
                self.peers[domain]!.inbox.removeFirst()
                self.malformed(domain, reason)
            case .message(var buffer):
                // Reading moves only this copy's reader index: the bytes are shared.
                let before = buffer.readableBytes
                var failure: MalformedMessage?
                while peer.budget > 0, buffer.readableBytes > 0 {
                    peer.budget -= 1
                    peer.framesHandled += 1
                    do {
                        guard let frame = try StreamFrame.parse(&buffer) else { break }
                        if case .sequence = frame {
                            failure = .sequenceInside
                            break
                        }
                        self.handle(frame, from: domain, peer: peer, now: now)
                    } catch {
                        failure = .frame(error)
                        break
                    }
                }
                guard self.peers.index(forKey: domain) != nil else { return }
                self.peers[domain]!.inboxBytes -= before - buffer.readableBytes
                if let failure {
                    self.peers[domain]!.inbox.removeFirst()
                    self.peers[domain]!.inboxBytes -= buffer.readableBytes
                    self.malformed(domain, failure)
                } else if buffer.readableBytes == 0 {
                    self.peers[domain]!.inbox.removeFirst()
                } else {
                    self.peers[domain]!.inbox[self.peers[domain]!.inbox.startIndex] = .message(buffer)
                }
            }
        }
    }

    /// A broken or hostile peer: every connection with it ends, what it sent before is
    /// dropped, and its numbering starts again with its next message.
    mutating func malformed(_ domain: DomainID, _ reason: MalformedMessage) {
        self.statistics.malformedMessages += 1
        self.actions.append(.notice(.malformed(domain, reason)))
        self.peers[domain]!.order.reset()
        self.peers[domain]!.inbox.removeAll()
        self.peers[domain]!.inboxBytes = 0
        for id in self.connections.keys.filter({ $0.peer == domain }) {
            self.terminate(id, .protocolError, resetReason: .protocolViolation)
        }
    }

    /// A message with a new instance id (SEQUENCE): the peer restarted, and the
    /// connections of its previous run are gone; its new ring may have another size.
    private mutating func peerRestarted(_ domain: DomainID, as instance: UInt64, now: NIODeadline) {
        let affected = self.connections.keys.filter { $0.peer == domain }
        self.actions.append(.notice(.peerRestarted(domain, connections: affected.count)))
        for id in affected { self.withConnection(id) { $0.peerRestarted(as: instance, now: now, into: &$1) } }
        self.peers[domain]!.sender.peerRingChanged(maximumMessageSize: nil)
        var healthActions: [PeerHealth.Action] = []
        self.peers[domain]!.health.querySize(now: now, into: &healthActions)
        self.execute(healthActions, for: domain, now: now)
    }
}

// MARK: - Frames

extension StreamMultiplexer {
    private mutating func handle(_ frame: StreamFrame, from domain: DomainID, peer: Peer, now: NIODeadline) {
        switch frame {
        case .open(let id, let servicePort, let credit, let instance, let version, let records, let caller):
            let connection = ConnectionID(peer: domain, key: .init(id: id, openedLocally: false))
            self.handleOpen(connection, servicePort, credit, instance, version, records, caller, now)
        case .accept(let key, let credit, let instance):
            let (maximumData, queueHasRoom) = self.sendLimits(of: domain)
            self.withKnown(domain, key) {
                $0.peerAccepted(
                    credit: credit,
                    instance: instance,
                    maximumData: maximumData,
                    queueHasRoom: queueHasRoom,
                    into: &$1
                )
            }
        case .refuse(let key, let reason):
            self.withKnown(domain, key) { $0.peerRefused(reason, into: &$1) }
        case .data(let key, let payload):
            self.withKnown(domain, key) { $0.peerData(payload, now: now, into: &$1) }
        case .credit(let key, let increment):
            let (maximumData, queueHasRoom) = self.sendLimits(of: domain)
            self.withKnown(domain, key) {
                $0.peerCredit(increment, maximumData: maximumData, queueHasRoom: queueHasRoom, into: &$1)
            }
        case .fin(let key):
            self.withKnown(domain, key) { $0.peerFin(into: &$1) }
        case .reset(let key, let reason):
            // Never answer a RESET: that could loop.
            self.withConnection(ConnectionID(peer: domain, key: key)) { $0.peerReset(reason, into: &$1) }
        case .ping(_, let nonce):
            self.enqueue(.pong(instance: self.instance, nonce: nonce), to: peer, domain)
        case .pong, .sequence:
            // Hearing from the peer is what a PONG is for; SEQUENCE is taken earlier.
            break
        case .datagram(let key, let servicePort, let payload):
            self.statistics.datagramsReceived += 1
            self.statistics.bytesFromPeer += payload.readableBytes
            self.actions.append(.datagram(ConnectionID(peer: domain, key: key), servicePort: servicePort, payload))
        case .datagramClose(let key, let reason):
            self.actions.append(.datagramClosed(ConnectionID(peer: domain, key: key), reason))
        }
    }

    /// Runs `body` on the connection a frame names, or answers RESET for an unknown one.
    private mutating func withKnown(
        _ domain: DomainID,
        _ key: StreamFrame.ConnectionKey,
        _ body: (inout StreamConnectionState, inout [StreamConnectionState.Action]) -> Void
    ) {
        let id = ConnectionID(peer: domain, key: key)
        guard self.connections.index(forKey: id) != nil else {
            return self.enqueue(.reset(key: key, reason: .unknownConnection), to: domain)
        }
        self.withConnection(id, body)
    }

    /// OPEN from a peer: the protocol's checks here; the export, its allow-list and
    /// limits are the owner's (``StreamAction/incomingOpen(_:servicePort:)``).
    private mutating func handleOpen(
        _ id: ConnectionID,
        _ servicePort: UInt32,
        _ credit: UInt32,
        _ instance: UInt64,
        _ version: UInt16,
        _ records: Bool,
        _ caller: ByteBuffer?,
        _ now: NIODeadline
    ) {
        guard self.connections.index(forKey: id) == nil else {
            self.actions.append(.notice(.reusedConnectionID(id)))
            return self.terminate(id, .protocolError, resetReason: .protocolViolation)
        }
        let refusal: StreamFrame.RefuseReason? =
            version != StreamFrame.version ? .unsupportedVersion : self.isAccepting ? nil : .shuttingDown
        if let refusal {
            self.enqueue(.refuse(key: id.key, reason: refusal), to: id.peer)
            self.actions.append(.openRefused(id, refusal))
            return
        }
        let state = StreamConnectionState.dialing(
            key: id.key,
            window: self.configuration.window,
            maximumWindow: self.configuration.maximumWindow,
            peerCredit: credit,
            peerInstance: instance,
            now: now
        )
        self.add(state, as: id)
        self.actions.append(.incomingOpen(id, servicePort: servicePort, records: records, caller: caller))
    }
}
