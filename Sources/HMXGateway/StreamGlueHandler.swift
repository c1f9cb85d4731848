// SPDX-License-Identifier: Apache-2.0
import NIOCore

/// The NIO end of a ``StreamConnection``: forwards the socket's bytes, half-close and
/// errors to the connection. Reads are driven by the connection (autoRead is off), so
/// nothing is read while the peer has no credit for it.
final class StreamGlueHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    /// Set once the connection exists (for imports: when the socket is accepted).
    var connection: StreamConnection?
    /// For accepted sockets: creates the connection when the channel becomes active.
    private let onActive: ((any Channel) -> StreamConnection?)?

    init(connection: StreamConnection?, onActive: ((any Channel) -> StreamConnection?)? = nil) {
        self.connection = connection
        self.onActive = onActive
    }

    func channelActive(context: ChannelHandlerContext) {
        if self.connection == nil, let onActive = self.onActive {
            self.connection = onActive(context.channel)
        }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.connection?.localRead(Self.unwrapInboundIn(data))
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        self.connection?.localReadComplete()
        context.fireChannelReadComplete()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            self.connection?.localInputClosed()
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        let connection = self.connection
        self.connection = nil
        connection?.localClosed(error: error)
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        let connection = self.connection
        self.connection = nil
        connection?.localClosed(error: nil)
        context.fireChannelInactive()
    }
}

@available(*, unavailable)
extension StreamGlueHandler: Sendable {}
