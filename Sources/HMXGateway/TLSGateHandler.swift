// SPDX-License-Identifier: Apache-2.0
import NIOCore
import NIOTLS

/// Sits behind a TLS handler and keeps the rest of the pipeline from seeing the
/// connection before its handshake is done.
///
/// - `channelActive` goes on only once the handshake completed (an import opens its
///   HMX connection then, knowing who the client is); ``handshake`` completes then,
///   or fails with the counted reason (verification, timeout, close).
/// - Reads: autoRead is off, so the gate reads the socket itself during the
///   handshake. The TLS handler may go on reading after it (it reads again when a
///   read brought no application data); bytes that arrive without a read asked for
///   from behind are held here until one is, so the reader behind (the stream glue,
///   which reads only while the peer grants credit) still decides when bytes move.
///   What is held is at most one socket read's worth, plus what SwiftNIO reads
///   without being asked when the peer half-closes (the socket's receive buffer).
public final class TLSGateHandler: ChannelDuplexHandler, RemovableChannelHandler {
    public typealias InboundIn = ByteBuffer
    public typealias InboundOut = ByteBuffer
    public typealias OutboundIn = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    /// The name a ``GatewayTLS`` gives the TLS handler it adds: an abort closes the
    /// socket from there, beneath it.
    public static let tlsHandlerName = "hmx-tls"

    private enum State {
        case handshaking
        case open
        case failed
    }

    private var state = State.handshaking
    private let tls: any GatewayTLS
    private let timeout: TimeAmount
    private var timeoutTask: Scheduled<Void>?
    private var promise: EventLoopPromise<TLSPeerIdentity>?
    /// Why verification failed, as the TLS handler's callback found it (its error
    /// says only that it failed).
    private var verificationFailure: TLSHandshakeError?
    private var held: [ByteBuffer] = []
    /// The peer's end of stream (close_notify), held behind held bytes.
    private var heldInputClosed = false
    private var isReadRequested = false
    private var deliveredSinceComplete = false

    /// The peer's verified identity, once the handshake is done.
    private(set) var identity: TLSPeerIdentity?

    /// Completes with the peer's identity once the handshake is done.
    var handshake: EventLoopFuture<TLSPeerIdentity> {
        self.promise!.futureResult
    }

    /// The name a server's certificate must carry (a client's gate; nil: none, or
    /// an address, which the TLS handler checks).
    private let expectedName: String?

    init(tls: any GatewayTLS, timeout: TimeAmount, expectedName: String? = nil) {
        self.tls = tls
        self.timeout = timeout
        self.expectedName = expectedName
    }

    /// From the TLS handler's verification: why the peer's certificate was refused.
    public func verificationFailed(_ error: TLSHandshakeError) {
        if self.verificationFailure == nil { self.verificationFailure = error }
    }

    public func handlerAdded(context: ChannelHandlerContext) {
        self.promise = context.eventLoop.makePromise()
        if context.channel.isActive { self.startHandshake(context: context) }
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        self.timeoutTask?.cancel()
        self.fail(TLSHandshakeError(.handshakeFailed, "the connection went away during the TLS handshake"))
    }

    private func startHandshake(context: ChannelHandlerContext) {
        guard self.timeoutTask == nil else { return }
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        self.timeoutTask = context.eventLoop.scheduleTask(in: self.timeout) {
            let (gate, context) = bound.value
            guard gate.state == .handshaking else { return }
            let seconds = Double(gate.timeout.nanoseconds) / 1e9
            gate.fail(TLSHandshakeError(.handshakeFailed, "no TLS handshake within \(seconds) s"))
            context.close(promise: nil)
        }
        context.read()
    }

    private func fail(_ error: TLSHandshakeError) {
        guard self.state == .handshaking else { return }
        self.state = .failed
        self.timeoutTask?.cancel()
        self.promise?.fail(error)
    }

    // MARK: - Inbound

    public func channelActive(context: ChannelHandlerContext) {
        switch self.state {
        case .handshaking: self.startHandshake(context: context)
        case .open: context.fireChannelActive()
        case .failed: break
        }
    }

    public func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed, !self.held.isEmpty {
            // After the bytes before it.
            self.heldInputClosed = true
            return
        }
        if let event = event as? TLSUserEvent, case .handshakeCompleted = event, self.state == .handshaking {
            self.timeoutTask?.cancel()
            let identity = self.tls.peerIdentity(of: context.channel)
            // The TLS handler also accepts a certificate for the address connected
            // to; a configured name must be in the certificate itself.
            if let name = self.expectedName, !identity.matches(hostname: name) {
                self.fail(
                    TLSHandshakeError(
                        .hostnameMismatch,
                        "the server's certificate (\(identity.dnsNames.joined(separator: ", "))) is not for \(name)"
                    )
                )
                context.close(promise: nil)
                return
            }
            self.state = .open
            self.identity = identity
            self.promise?.succeed(identity)
            context.fireChannelActive()
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    public func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard self.state == .handshaking else {
            context.fireErrorCaught(error)
            return
        }
        self.fail(self.verificationFailure ?? self.tls.classify(error))
        context.close(promise: nil)
    }

    public func channelInactive(context: ChannelHandlerContext) {
        self.fail(
            self.verificationFailure
                ?? TLSHandshakeError(.handshakeFailed, "the peer closed the connection during the TLS handshake")
        )
        self.timeoutTask?.cancel()
        guard self.state == .open else { return }
        // What arrived before the close goes first.
        self.deliverHeld(context: context)
        context.fireChannelInactive()
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard self.state == .open else { return }
        if self.isReadRequested {
            self.deliveredSinceComplete = true
            context.fireChannelRead(data)
        } else {
            self.held.append(Self.unwrapInboundIn(data))
        }
    }

    public func channelReadComplete(context: ChannelHandlerContext) {
        guard self.deliveredSinceComplete else { return }
        self.deliveredSinceComplete = false
        self.isReadRequested = false
        context.fireChannelReadComplete()
    }

    // MARK: - Outbound

    public func read(context: ChannelHandlerContext) {
        guard self.state == .open else { return }
        if self.held.isEmpty {
            self.isReadRequested = true
            context.read()
            return
        }
        self.deliverHeld(context: context)
    }

    private func deliverHeld(context: ChannelHandlerContext) {
        let held = self.held
        self.held = []
        if !held.isEmpty {
            for bytes in held { context.fireChannelRead(Self.wrapInboundOut(bytes)) }
            context.fireChannelReadComplete()
        }
        if self.heldInputClosed {
            self.heldInputClosed = false
            context.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        }
    }
}

@available(*, unavailable)
extension TLSGateHandler: Sendable {}
