// SPDX-License-Identifier: Apache-2.0
import HMXProxyProtocol
import NIOCore

/// `proxy_protocol: accept` on an import listener: a trusted source (by its verified
/// client certificate or its address) must begin with a PROXY v2 header, which is
/// read before the connection is opened; anyone else's first bytes must not be one.
///
/// - Trusted: the handler reads the header itself (at most
///   ``ProxyHeader/defaultMaximumLength`` bytes, within the timeout), then lets
///   `channelActive` on; bytes after the header wait for the reader behind.
/// - Untrusted: `channelActive` goes on at once (server-first protocols work); the
///   first bytes are held only while they could still be the PROXY signature (at most
///   12), then go on, or the connection is refused if they are one.
/// - What is held is at most one socket read's worth, plus what SwiftNIO reads
///   without being asked when the client half-closes (the socket's receive buffer).
final class ProxyHeaderReader: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// Why a connection was refused, for the gateway's count and log.
    struct Refused: Error, CustomStringConvertible {
        var description: String
    }

    private enum State {
        case idle
        case readingHeader
        case watching
        case passing
        case refused
    }

    private var state = State.idle
    private let trusted: [GatewayConfig.TrustedProxy]
    private let timeout: TimeAmount
    private let onRefused: (any Channel, Refused) -> Void
    private var timeoutTask: Scheduled<Void>?
    private var buffer: ByteBuffer?
    private var held: ByteBuffer?
    private var heldInputClosed = false
    /// The header a trusted source sent, and the `trusted_proxies` entry it matched.
    private(set) var header: ProxyHeader?
    private(set) var trustedBy: String?

    init(
        trusted: [GatewayConfig.TrustedProxy],
        timeout: TimeAmount,
        onRefused: @escaping (any Channel, Refused) -> Void
    ) {
        self.trusted = trusted
        self.timeout = timeout
        self.onRefused = onRefused
    }

    /// The entry of `trusted` the client matches: its verified certificate's name, or
    /// its address.
    static func match(
        _ trusted: [GatewayConfig.TrustedProxy],
        identity: TLSPeerIdentity?,
        address: SocketAddress?
    ) -> String? {
        let bytes = IPNetwork.bytes(of: address)
        for entry in trusted {
            switch entry {
            case .certificate(let name) where identity?.isNamed(name) == true: return name
            case .address(let network) where bytes.map(network.contains) == true: return address?.ipAddress
            case .certificate, .address: continue
            }
        }
        return nil
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.timeoutTask?.cancel()
    }

    // MARK: - Inbound

    func channelActive(context: ChannelHandlerContext) {
        guard self.state == .idle else { return context.fireChannelActive() }
        let identity = try? context.pipeline.syncOperations.handler(type: TLSGateHandler.self).identity
        self.trustedBy = Self.match(self.trusted, identity: identity, address: context.channel.remoteAddress)
        self.buffer = context.channel.allocator.buffer(capacity: 0)
        guard self.trustedBy != nil else {
            self.state = .watching
            context.fireChannelActive()
            return
        }
        self.state = .readingHeader
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        self.timeoutTask = context.eventLoop.scheduleTask(in: self.timeout) {
            let (reader, context) = bound.value
            guard reader.state == .readingHeader else { return }
            let seconds = Double(reader.timeout.nanoseconds) / 1e9
            reader.refuse(context: context, "no PROXY header within \(seconds) s from \(reader.trustedBy!)")
        }
        context.read()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = Self.unwrapInboundIn(data)
        switch self.state {
        case .passing where self.held != nil:
            // Bytes no one asked for (SwiftNIO drains the socket when the client
            // half-closes) go behind the held ones.
            self.held!.writeBuffer(&bytes)
        case .passing:
            context.fireChannelRead(data)
        case .idle, .refused:
            break
        case .readingHeader:
            self.buffer!.writeBuffer(&bytes)
            do {
                guard let header = try ProxyHeader.parse(from: &self.buffer!) else {
                    if self.buffer!.readableBytes >= ProxyHeader.defaultMaximumLength {
                        self.refuse(
                            context: context,
                            "a PROXY header longer than \(ProxyHeader.defaultMaximumLength) bytes"
                        )
                    }
                    return
                }
                self.header = header
                self.state = .passing
                self.timeoutTask?.cancel()
                if self.buffer!.readableBytes > 0 { self.held = self.buffer }
                self.buffer = nil
                context.fireChannelActive()
            } catch {
                self.refuse(context: context, "a malformed PROXY header from \(self.trustedBy!): \(error)")
            }
        case .watching:
            self.buffer!.writeBuffer(&bytes)
            let seen = self.buffer!.readableBytesView.prefix(ProxyHeader.signature.count)
            guard seen.elementsEqual(ProxyHeader.signature.prefix(seen.count)) else {
                self.state = .passing
                context.fireChannelRead(Self.wrapInboundOut(self.buffer!))
                self.buffer = nil
                return
            }
            if seen.count == ProxyHeader.signature.count {
                self.refuse(
                    context: context,
                    "a PROXY header from \(context.channel.remoteAddress?.description ?? "a client") not in trusted_proxies"
                )
            }
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        switch self.state {
        case .passing: context.fireChannelReadComplete()
        case .readingHeader, .watching: context.read()
        case .idle, .refused: break
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard let event = event as? ChannelEvent, event == .inputClosed else {
            return context.fireUserInboundEventTriggered(event)
        }
        switch self.state {
        case .readingHeader:
            self.refuse(context: context, "\(self.trustedBy!) closed before its PROXY header was complete")
        case .watching:
            // Fewer bytes than a signature: they are the client's.
            self.state = .passing
            if let buffer = self.buffer, buffer.readableBytes > 0 {
                context.fireChannelRead(Self.wrapInboundOut(buffer))
                context.fireChannelReadComplete()
            }
            self.buffer = nil
            context.fireUserInboundEventTriggered(event)
        case .passing where self.held != nil:
            self.heldInputClosed = true
        case .passing, .idle, .refused:
            context.fireUserInboundEventTriggered(event)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.timeoutTask?.cancel()
        if self.state == .readingHeader {
            self.state = .refused
            self.onRefused(context.channel, Refused(description: "\(self.trustedBy!) closed before its PROXY header"))
        }
        if self.state == .passing { self.deliverHeld(context: context) }
        context.fireChannelInactive()
    }

    private func refuse(context: ChannelHandlerContext, _ reason: String) {
        let wasActive = self.state == .watching
        self.state = .refused
        self.timeoutTask?.cancel()
        self.buffer = nil
        self.onRefused(context.channel, Refused(description: reason))
        if wasActive {
            // The connection is open already: the peer sees a reset.
            context.fireErrorCaught(Refused(description: reason))
        } else {
            context.close(promise: nil)
        }
    }

    // MARK: - Outbound

    func read(context: ChannelHandlerContext) {
        switch self.state {
        case .passing where self.held != nil || self.heldInputClosed: self.deliverHeld(context: context)
        case .passing, .watching: context.read()
        case .idle, .readingHeader, .refused: break
        }
    }

    private func deliverHeld(context: ChannelHandlerContext) {
        if let held = self.held {
            self.held = nil
            context.fireChannelRead(Self.wrapInboundOut(held))
            context.fireChannelReadComplete()
        }
        if self.heldInputClosed {
            self.heldInputClosed = false
            context.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        }
    }
}

@available(*, unavailable)
extension ProxyHeaderReader: Sendable {}
