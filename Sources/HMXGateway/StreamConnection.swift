// SPDX-License-Identifier: Apache-2.0
import HMXCore
import HMXStream
import CoreMetrics
import Logging
import NIOCore
import NIOPosix

/// One byte stream between a local socket and a peer gateway: the glue between a NIO
/// channel and the HMX stream protocol, driven by ``StreamConnectionState``.
///
/// Backpressure, both ways:
/// - local → peer: the socket is read (autoRead is off) only while the peer has
///   granted credit and the peer's queue has room; at most one read can overshoot,
///   and it is held here.
/// - peer → local: DATA is written to the socket; credit goes back to the peer only
///   when the socket has taken the bytes. A slow reader thus stops only its own writer.
final class StreamConnection {
    enum Role: Equatable {
        case imported(name: String)
        case exported(name: String)
        var isImport: Bool { if case .imported = self { true } else { false } }
        var mapping: String {
            switch self {
            case .imported(let name), .exported(let name): name
            }
        }
    }

    let key: StreamFrame.ConnectionKey
    let peer: PeerLink
    let role: Role
    private unowned let core: GatewayCore
    var state: StreamConnectionState
    var channel: (any Channel)?
    var logger: Logger
    /// Bytes read from the socket beyond the credit, sent when credit arrives.
    private var heldOutbound: ByteBuffer?
    private var isFinPending = false
    private var isReadRequested = false
    private var hasCounted = false
    /// Bytes by which this connection's window grew (taken from the core's pool and
    /// given back when the connection is removed).
    private(set) var windowGrowth = 0
    /// Bytes from the peer handed to the socket whose write has not completed.
    private var undeliveredBytes = 0
    /// Reading stopped until the peer's queue has room (``PeerLink/waitForQueueRoom(_:)``).
    private var isWaitingForQueueRoom = false
    var lastActivity: NIODeadline = .now()
    /// For a connection we open: when to give up waiting for the peer's answer.
    var openDeadline: NIODeadline?
    /// For a connection we open: the OPEN went out while our ring for the peer did not
    /// exist, so the peer could not answer it.
    var openedWithoutRing = false
    let idleTimeout: TimeAmount?

    init(key: StreamFrame.ConnectionKey, peer: PeerLink, role: Role, state: StreamConnectionState, core: GatewayCore, logger: Logger, idleTimeout: TimeAmount?) {
        self.key = key
        self.peer = peer
        self.role = role
        self.state = state
        self.core = core
        self.logger = logger
        self.idleTimeout = idleTimeout
    }

    // MARK: - Local socket events

    func attach(_ channel: any Channel) {
        self.channel = channel
    }

    /// Bytes the local application wrote. Normally read only within credit, but NIO
    /// reads everything up to EOF when the peer half-closes (EPOLLRDHUP), even before
    /// the connection is accepted; such bytes are held (bounded by the socket's receive
    /// buffer) and sent as credit allows.
    func localRead(_ buffer: ByteBuffer) {
        self.isReadRequested = false
        self.lastActivity = .now()
        guard self.state.phase == .opening || (self.state.phase == .open && !self.state.hasSentFin) else { return }
        var buffer = buffer
        if var held = self.heldOutbound {
            held.writeBuffer(&buffer)
            buffer = held
            self.heldOutbound = nil
        }
        if self.state.phase == .open { self.sendWithinCredit(&buffer) }
        if buffer.readableBytes > 0 { self.heldOutbound = buffer }
    }

    /// Sends held bytes within the credit, then a pending FIN once they are all out.
    private func sendHeld() {
        if var held = self.heldOutbound {
            self.heldOutbound = nil
            self.sendWithinCredit(&held)
            if held.readableBytes > 0 { self.heldOutbound = held }
        }
        if self.isFinPending, self.heldOutbound == nil { self.sendFin() }
    }

    private func sendWithinCredit(_ buffer: inout ByteBuffer) {
        let maximum = self.peer.maximumDataLength
        // `enqueue` may end the connection (a peer that stopped draining fails): check
        // the phase on every turn.
        while buffer.readableBytes > 0, self.state.sendCredit > 0, self.state.phase == .open, !self.state.hasSentFin {
            let count = min(buffer.readableBytes, self.state.sendCredit, maximum)
            let slice = buffer.readSlice(length: count)!
            self.state.sent(count)
            self.core.metrics.bytesToPeer.increment(by: Int64(count))
            self.peer.enqueue(.data(key: self.key, payload: slice))
        }
    }

    /// The read burst ended: ask for more if the peer can take it.
    func localReadComplete() {
        self.requestReadIfPossible()
    }

    func requestReadIfPossible() {
        guard let channel = self.channel, self.state.phase == .open, !self.state.hasSentFin, !self.isFinPending,
            self.heldOutbound == nil, self.state.sendCredit > 0, !self.isReadRequested, !self.isWaitingForQueueRoom
        else { return }
        guard self.peer.hasQueueRoom else {
            // The peer's queue is full (its ring drains slower than we read): wait.
            self.isWaitingForQueueRoom = true
            self.peer.waitForQueueRoom(self)
            return
        }
        self.isReadRequested = true
        channel.read()
    }

    /// The peer's queue has room again (or the peer is gone).
    func queueHasRoom() {
        self.isWaitingForQueueRoom = false
        self.requestReadIfPossible()
    }

    /// The local application shut its output (half-close).
    func localInputClosed() {
        if self.state.phase == .opening {
            // FIN once the peer has accepted and the held bytes are sent.
            self.isFinPending = true
            return
        }
        guard self.state.phase == .open, !self.state.hasSentFin else { return }
        if self.heldOutbound != nil {
            self.isFinPending = true
            return
        }
        self.sendFin()
    }

    private func sendFin() {
        self.isFinPending = false
        self.peer.enqueue(.fin(key: self.key))
        if self.state.sentFin() { self.finish(.opened) }
    }

    /// The local socket is gone: cleanly (a FIN, like TCP's close) or with an error
    /// (a reset).
    func localClosed(error: (any Error)?) {
        self.channel = nil
        guard !self.state.isClosed else {
            self.core.remove(self)
            return
        }
        if error == nil, self.state.phase == .open, self.undeliveredBytes == 0 {
            // A clean close ends our direction. Whatever the peer still sends can no
            // longer be delivered and is answered with a reset (as TCP would).
            if !self.state.hasSentFin { self.localInputClosed() }
            return
        }
        // Otherwise (an error, a connection not yet open, or bytes from the peer lost
        // with the socket: writes that never completed) both ends must see a reset.
        // Waiting for the peer's next DATA would not do after a loss: the peer may have
        // no credit left, which only the lost bytes' delivery would have given back.
        if let error { self.logger.debug("local connection failed", metadata: ["error": "\(error)"]) }
        // A connection still opening has no id at the peer yet beyond our OPEN: RESET covers it.
        self.state.aborted()
        self.peer.enqueue(.reset(key: self.key, reason: .applicationReset))
        self.finish(.reset)
    }

    // MARK: - Peer frames

    func peerAccepted(credit: UInt32) {
        switch self.state.accepted(credit: credit) {
        case .success:
            self.logger.debug("connection accepted by the peer")
            self.countOpened()
            self.sendHeld()
            self.requestReadIfPossible()
        case .failure(let violation):
            self.violation(violation)
        }
    }

    func peerRefused(_ reason: StreamFrame.RefuseReason) {
        guard case .success = self.state.refused() else {
            self.violation(.unexpected("REFUSE"))
            return
        }
        self.logger.warning("connection refused by the peer gateway", metadata: ["reason": "\(reason)"])
        let outcome: GatewayMetrics.Outcome =
            switch reason {
            case .noSuchService: .noSuchService
            case .deniedByGateway: .deniedByGateway
            case .targetRefused: .targetRefused
            case .targetTimedOut: .targetTimedOut
            case .limitReached: .limitReached
            case .shuttingDown: .shuttingDown
            case .protocolError, .unsupportedVersion: .protocolError
            }
        self.abortLocal()
        self.finish(outcome)
    }

    func peerData(_ payload: ByteBuffer) {
        switch self.state.receivedData(payload.readableBytes) {
        case .success:
            self.lastActivity = .now()
            let count = payload.readableBytes
            self.core.metrics.bytesFromPeer.increment(by: Int64(count))
            guard let channel = self.channel, channel.isActive else {
                // The local application closed: these bytes cannot be delivered.
                self.terminate(.reset, resetReason: .applicationReset)
                return
            }
            let promise = channel.eventLoop.makePromise(of: Void.self)
            self.undeliveredBytes += count
            channel.write(payload, promise: promise)
            self.core.markNeedsFlush(self)
            promise.futureResult.assumeIsolated().whenSuccess {
                self.undeliveredBytes -= count
                let grant = self.state.delivered(
                    count,
                    now: NIODeadline.now().uptimeNanoseconds,
                    mayGrowBy: self.core.windowPoolFree
                )
                if grant.growth > 0 {
                    self.windowGrowth += grant.growth
                    self.core.windowGrew(by: grant.growth)
                }
                if grant.increment > 0 { self.peer.enqueue(.credit(key: self.key, increment: grant.increment)) }
            }
        case .failure(let violation):
            self.violation(violation)
        }
    }

    func flush() {
        self.channel?.flush()
    }

    func peerCredit(_ increment: UInt32) {
        switch self.state.receivedCredit(increment) {
        case .success:
            self.sendHeld()
            self.requestReadIfPossible()
        case .failure(let violation):
            self.violation(violation)
        }
    }

    func peerFin() {
        switch self.state.receivedFin() {
        case .success(.closeLocal):
            // DATA frames just before this FIN may still be unflushed: flush first, or
            // closing would drop them.
            self.channel?.flush()
            self.channel?.close(mode: .output, promise: nil)
            self.finish(.opened)
        case .success:
            // Half-close: the local application sees EOF after the pending bytes.
            self.channel?.flush()
            self.channel?.close(mode: .output, promise: nil)
        case .failure(let violation):
            self.violation(violation)
        }
    }

    func peerReset(_ reason: StreamFrame.ResetReason) {
        guard self.state.receivedReset() != .none else { return }
        self.logger.info("connection reset by the peer", metadata: ["reason": "\(reason)"])
        self.abortLocal()
        self.finish(.reset)
    }

    /// The peer broke the protocol on this connection: reset it, and only it.
    private func violation(_ violation: StreamConnectionState.Violation) {
        self.logger.warning("peer violated the stream protocol; resetting the connection", metadata: ["violation": "\(violation)"])
        self.state.aborted()
        let reason: StreamFrame.ResetReason = violation == .beyondCredit ? .flowControlViolation : .protocolViolation
        self.peer.enqueue(.reset(key: self.key, reason: reason))
        self.abortLocal()
        self.finish(.protocolError)
    }

    // MARK: - Teardown

    /// Ends the connection from our side (link lost, shutdown, idle): RESET to the peer
    /// if it can still hear us, abort the local socket.
    func terminate(_ outcome: GatewayMetrics.Outcome, resetReason: StreamFrame.ResetReason?) {
        if let resetReason, !self.state.isClosed { self.peer.enqueue(.reset(key: self.key, reason: resetReason)) }
        self.state.aborted()
        self.abortLocal()
        self.finish(outcome)
    }

    /// Closes the local socket with a TCP reset (SO_LINGER 0) so the application sees
    /// an abort, not a clean end of stream.
    func abortLocal() {
        guard let channel = self.channel, channel.isActive else { return }
        if let provider = channel as? any SocketOptionProvider {
            // On the channel's own loop this takes effect before the close below.
            provider.setSoLinger(linger(l_onoff: 1, l_linger: 0)).whenComplete { _ in channel.close(promise: nil) }
        } else {
            channel.close(promise: nil)
        }
    }

    /// Counts the outcome once; removes the connection when both sides are done.
    func finish(_ outcome: GatewayMetrics.Outcome) {
        if !self.hasCounted {
            self.hasCounted = true
            if outcome != .opened { self.core.metrics.count(outcome, imported: self.role.isImport) }
        }
        if self.state.isClosed { self.core.remove(self) }
    }

    /// Called when the connection opened for real (counted as opened).
    func countOpened() {
        self.core.metrics.count(.opened, imported: self.role.isImport)
    }
}

@available(*, unavailable)
extension StreamConnection: Sendable {}
