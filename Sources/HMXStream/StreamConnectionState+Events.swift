// SPDX-License-Identifier: Apache-2.0
import NIOCore

// MARK: - From the local socket

extension StreamConnectionState {
    /// Bytes the local application wrote. Normally read only within credit, but NIO
    /// reads everything up to EOF when the application half-closes (EPOLLRDHUP), even
    /// before the connection is accepted: such bytes are held (bounded by the socket's
    /// receive buffer) and sent as credit allows.
    public mutating func localRead(
        _ bytes: ByteBuffer,
        maximumData: Int,
        now: NIODeadline,
        into actions: inout [Action]
    ) {
        self.isReadRequested = false
        self.lastActivity = now
        guard self.phase == .opening || (self.phase == .open && !self.hasSentFin) else { return }
        var buffer = bytes
        if var held = self.heldOutbound {
            held.writeBuffer(&buffer)
            buffer = held
            self.heldOutbound = nil
        }
        if self.phase == .open { self.sendWithinCredit(&buffer, maximumData: maximumData, into: &actions) }
        if buffer.readableBytes > 0 { self.heldOutbound = buffer }
    }

    /// The read burst ended: ask for more if the peer can take it.
    public mutating func localReadComplete(queueHasRoom: Bool, into actions: inout [Action]) {
        self.requestReadIfPossible(queueHasRoom: queueHasRoom, into: &actions)
    }

    /// The local application shut its output (half-close): FIN once the held bytes are
    /// out (and, for a connection still opening, once the peer has accepted).
    public mutating func localInputClosed(into actions: inout [Action]) {
        switch self.phase {
        case .opening:
            self.isFinPending = true
        case .open where !self.hasSentFin:
            if self.heldOutbound != nil {
                self.isFinPending = true
            } else {
                self.sendFin(into: &actions)
            }
        case .open, .dialing, .closed:
            break
        }
    }

    /// The local socket is gone: cleanly (a FIN, like TCP's close) or with an error.
    public mutating func localClosed(error: Bool, into actions: inout [Action]) {
        self.hasLocalSocket = false
        guard self.phase != .closed else { return }
        if !error, self.phase == .open, self.undeliveredBytes == 0 {
            // A clean close ends our direction. Whatever the peer still sends can no
            // longer be delivered and is answered with a reset (as TCP would).
            if !self.hasSentFin { self.localInputClosed(into: &actions) }
            return
        }
        // Otherwise (an error, a connection not yet open, or bytes from the peer lost
        // with the socket) both ends must see a reset. Waiting for the peer's next DATA
        // would not do after a loss: the peer may have no credit left, which only the
        // lost bytes' delivery would have given back.
        self.abort(.localReset, resetReason: .applicationReset, into: &actions)
    }

    /// The socket took `count` bytes written for the peer: grant credit back.
    /// - Parameter budget: bytes the window may still grow by (the shared pool).
    public mutating func localWriteCompleted(_ count: Int, now: NIODeadline, budget: Int, into actions: inout [Action])
    {
        self.undeliveredBytes -= count
        let grant = self.flow.delivered(
            count,
            now: now.uptimeNanoseconds,
            budget: budget,
            mayGrant: self.phase == .open && !self.hasReceivedFin
        )
        if grant.growth > 0 { actions.append(.windowGrew(grant.growth)) }
        if grant.increment > 0 { actions.append(.send(.credit(key: self.key, increment: grant.increment))) }
    }

    /// The peer's send queue has room again.
    public mutating func queueHasRoom(into actions: inout [Action]) {
        self.isWaitingForQueueRoom = false
        self.requestReadIfPossible(queueHasRoom: true, into: &actions)
    }

    /// The export's target is connected: ACCEPT, granting our window.
    public mutating func dialSucceeded(instance: UInt64, queueHasRoom: Bool, into actions: inout [Action]) {
        guard self.phase == .dialing else { return }
        self.phase = .open
        self.hasLocalSocket = true
        actions.append(.send(.accept(key: self.key, initialCredit: UInt32(self.flow.window), instance: instance)))
        actions.append(.opened)
        self.requestReadIfPossible(queueHasRoom: queueHasRoom, into: &actions)
    }

    /// The export's target could not be reached, or the gateway refuses the OPEN:
    /// REFUSE with `reason`.
    public mutating func refuse(_ reason: StreamFrame.RefuseReason, into actions: inout [Action]) {
        guard self.phase == .dialing else { return }
        self.phase = .closed
        actions.append(.send(.refuse(key: self.key, reason: reason)))
        self.finish(.refusedHere(reason), into: &actions)
    }
}

// MARK: - From the peer

extension StreamConnectionState {
    /// ACCEPT for a connection we opened, from the peer's run `instance`.
    public mutating func peerAccepted(
        credit: UInt32,
        instance: UInt64? = nil,
        maximumData: Int,
        queueHasRoom: Bool,
        into actions: inout [Action]
    ) {
        guard self.phase == .opening else {
            return self.violation(.unexpected(.accept, in: self.phase), into: &actions)
        }
        guard case .success = self.flow.granted(initialCredit: credit) else {
            return self.violation(.creditOverflow, into: &actions)
        }
        self.phase = .open
        self.peerInstance = instance
        actions.append(.opened)
        self.sendHeld(maximumData: maximumData, into: &actions)
        self.requestReadIfPossible(queueHasRoom: queueHasRoom, into: &actions)
    }

    /// REFUSE for a connection we opened.
    public mutating func peerRefused(_ reason: StreamFrame.RefuseReason, into actions: inout [Action]) {
        guard self.phase == .opening else {
            return self.violation(.unexpected(.refuse, in: self.phase), into: &actions)
        }
        self.abort(.refusedByPeer(reason), resetReason: nil, into: &actions)
    }

    /// DATA from the peer: written to the socket, or a reset if the socket is gone.
    public mutating func peerData(_ payload: ByteBuffer, now: NIODeadline, into actions: inout [Action]) {
        guard self.phase == .open else { return self.violation(.unexpected(.data, in: self.phase), into: &actions) }
        guard !self.hasReceivedFin else { return self.violation(.dataAfterFin, into: &actions) }
        guard case .success = self.flow.receivedData(payload.readableBytes) else {
            return self.violation(.beyondCredit, into: &actions)
        }
        self.lastActivity = now
        guard self.hasLocalSocket else {
            // The local application closed: these bytes cannot be delivered.
            return self.abort(.localReset, resetReason: .applicationReset, into: &actions)
        }
        self.undeliveredBytes += payload.readableBytes
        actions.append(.write(payload))
    }

    /// CREDIT from the peer.
    public mutating func peerCredit(
        _ increment: UInt32,
        maximumData: Int,
        queueHasRoom: Bool,
        into actions: inout [Action]
    ) {
        guard self.phase == .open else { return self.violation(.unexpected(.credit, in: self.phase), into: &actions) }
        guard case .success = self.flow.receivedCredit(increment) else {
            return self.violation(.creditOverflow, into: &actions)
        }
        self.sendHeld(maximumData: maximumData, into: &actions)
        self.requestReadIfPossible(queueHasRoom: queueHasRoom, into: &actions)
    }

    /// FIN: the peer sends no more data; the application sees EOF after the pending bytes.
    public mutating func peerFin(into actions: inout [Action]) {
        guard self.phase == .open else { return self.violation(.unexpected(.fin, in: self.phase), into: &actions) }
        guard !self.hasReceivedFin else { return self.violation(.secondFin, into: &actions) }
        self.hasReceivedFin = true
        if self.hasLocalSocket { actions.append(.shutdownOutput) }
        if self.hasSentFin {
            self.phase = .closed
            self.finish(nil, into: &actions)
        }
    }

    /// RESET from the peer. Never answered (that could loop).
    public mutating func peerReset(_ reason: StreamFrame.ResetReason, into actions: inout [Action]) {
        guard self.phase != .closed else { return }
        self.abort(.resetByPeer(reason), resetReason: nil, into: &actions)
    }
}

// MARK: - From the multiplexer

extension StreamConnectionState {
    /// Ends the connection from our side (peer lost or restarted, shutdown, missing
    /// ring): RESET to the peer if `resetReason` is given, abort the local socket.
    public mutating func terminate(
        _ outcome: ConnectionOutcome,
        resetReason: StreamFrame.ResetReason?,
        into actions: inout [Action]
    ) {
        guard self.phase != .closed else { return }
        self.abort(.terminated(outcome), resetReason: resetReason, into: &actions)
    }

    /// Timers: the idle timeout, and the deadline for the peer's answer to our OPEN.
    public mutating func tick(now: NIODeadline, into actions: inout [Action]) {
        if let idle = self.idleTimeout, now - self.lastActivity > idle {
            self.terminate(.idleTimeout, resetReason: .idleTimeout, into: &actions)
        } else if self.phase == .opening, let deadline = self.openDeadline, now > deadline {
            self.abort(.openTimedOut, resetReason: .linkFailure, into: &actions)
        }
    }

    /// The peer's gateway restarted as `instance`: a connection of its previous run is
    /// gone (no RESET: the new run does not know it). One still opening may have
    /// reached the new run: it waits a little longer for the answer.
    public mutating func peerRestarted(as instance: UInt64, now: NIODeadline, into actions: inout [Action]) {
        switch self.phase {
        case .opening:
            let deadline = now + Self.openTimeoutAfterPeerRestart
            self.openDeadline = min(self.openDeadline ?? deadline, deadline)
        case .dialing, .open:
            if self.peerInstance != instance { self.terminate(.peerLost, resetReason: nil, into: &actions) }
        case .closed:
            break
        }
    }

    /// Our ring for the peer exists now. If our OPEN went out before it did, the
    /// peer's answer could not reach us: reset, so the client can retry at once.
    public mutating func ringAppeared(into actions: inout [Action]) {
        guard self.openedWithoutRing, self.phase == .opening else { return }
        self.terminate(.noRing, resetReason: .linkFailure, into: &actions)
    }
}
