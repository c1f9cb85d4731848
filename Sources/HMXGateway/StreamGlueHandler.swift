// SPDX-License-Identifier: Apache-2.0
import HMXStream
import NIOCore
import NIOPosix

/// The socket end of one HMX stream connection: a duplex handler that owns its
/// channel's context (after swift-nio-examples' `GlueHandler`).
///
/// - Inbound (the application's bytes, half-close, errors, close) goes to the
///   ``StreamDriver`` as events on the connection.
/// - As the connection's ``StreamSocket``, it executes the driver's actions: writes
///   (their completion returns credit to the peer), reads, shutdown of the output,
///   abort, and a flush when the driver's turn ends.
/// - `read()` is gated: autoRead is off, and a read (also one from elsewhere in the
///   pipeline) reaches the socket only once the driver asked for it, i.e. while the
///   peer has granted credit and its send queue has room. Writes are flushed when the
///   driver's turn ends (the other side's "read complete").
final class StreamGlueHandler: ChannelDuplexHandler, StreamSocket {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let driver: StreamDriver
    /// The connection, once it exists (an import's: when the socket is accepted; an
    /// export's: when its dial succeeded); nil again once the driver forgot it.
    private(set) var id: ConnectionID?
    /// For accepted sockets: admits the client and opens its connection.
    private let onActive: ((any Channel) -> ConnectionID?)?
    private var context: ChannelHandlerContext?
    /// The driver asked for a read that has not reached the socket yet.
    private var isReadAllowed = false
    /// A read not yet handed to the driver: with its read-complete it goes in one call.
    private var heldRead: ByteBuffer?
    private var hasUnflushedWrites = false
    /// Writes handed to the channel whose completion has not come back.
    private var pendingWrites = 0
    /// The output is to be shut once the pending writes are done.
    private var isShutdownPending = false
    /// Bytes read from the socket (for the peer) and written to it (from the peer),
    /// for the audit record of the connection's end.
    private(set) var bytesRead = 0
    private(set) var bytesWritten = 0

    init(driver: StreamDriver, onActive: ((any Channel) -> ConnectionID?)? = nil) {
        self.driver = driver
        self.onActive = onActive
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    /// The connection is `id` from now on (an export's target is connected).
    func attach(_ id: ConnectionID) {
        self.id = id
    }

    /// The driver forgot the connection: later socket events are not its business.
    func detach() {
        self.id = nil
    }

    // MARK: - Actions from the driver

    /// Writes bytes from the peer; their completion returns credit.
    func write(_ bytes: ByteBuffer) {
        guard let context, let id else { return }
        let count = bytes.readableBytes
        let promise = context.eventLoop.makePromise(of: Void.self)
        context.write(self.wrapOutboundOut(bytes), promise: promise)
        self.hasUnflushedWrites = true
        self.pendingWrites += 1
        promise.futureResult.assumeIsolated().whenComplete { result in
            self.pendingWrites -= 1
            if self.isShutdownPending, self.pendingWrites == 0 { self.shutdownOutputNow() }
            // Only for this connection: its id may be reused once it is forgotten.
            guard case .success = result, self.id == id else { return }
            self.bytesWritten += count
            self.driver.localWriteCompleted(id, count: count)
        }
    }

    func flush() {
        guard self.hasUnflushedWrites, let context else { return }
        self.hasUnflushedWrites = false
        context.flush()
    }

    /// Reads the socket once more.
    func read() {
        guard let context else { return }
        self.isReadAllowed = true
        context.read()
    }

    /// No more data will come: EOF for the application after the pending bytes.
    ///
    /// The output is shut only once every write has completed: when the socket's input
    /// is closed already (the application half-closed first), SwiftNIO turns
    /// `close(mode: .output)` into a full close, which drops writes still waiting for
    /// room in the socket: a slow reader would see EOF with bytes missing.
    func shutdownOutput() {
        guard self.context != nil else { return }
        // DATA just before may still be unflushed: closing would drop it.
        self.flush()
        if self.pendingWrites > 0 {
            self.isShutdownPending = true
        } else {
            self.shutdownOutputNow()
        }
    }

    private func shutdownOutputNow() {
        self.isShutdownPending = false
        self.context?.close(mode: .output, promise: nil)
    }

    /// Closes the socket with a TCP reset (SO_LINGER 0), so the application sees an
    /// abort, not a clean end of stream. Under TLS the close starts below the TLS
    /// handler: no close_notify, which would tell the application the stream ended
    /// cleanly.
    func abort() {
        guard let context, context.channel.isActive else { return }
        let channel = context.channel
        let below = try? channel.pipeline.syncOperations.context(name: TLSGateHandler.tlsHandlerName)
        if let provider = channel as? any SocketOptionProvider {
            // On the channel's own loop this takes effect before the close below.
            provider.setSoLinger(linger(l_onoff: 1, l_linger: 0)).assumeIsolated().whenComplete { _ in
                if let below { below.close(promise: nil) } else { channel.close(promise: nil) }
            }
        } else {
            context.close(promise: nil)
        }
    }

    // MARK: - Inbound

    func channelActive(context: ChannelHandlerContext) {
        if self.id == nil, let onActive = self.onActive {
            self.id = onActive(context.channel)
        }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.isReadAllowed = false
        guard self.id != nil else { return }
        self.handOverHeldRead()
        let bytes = Self.unwrapInboundIn(data)
        self.bytesRead += bytes.readableBytes
        self.heldRead = bytes
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if let id {
            if let bytes = self.heldRead {
                // The usual case (one read per read burst): one call, one turn of work.
                self.heldRead = nil
                self.driver.localReadAndComplete(id, bytes)
            } else {
                self.driver.localReadComplete(id)
            }
        }
        context.fireChannelReadComplete()
    }

    /// Gives the driver a read held for its read-complete, before anything else about
    /// the socket.
    private func handOverHeldRead() {
        guard let bytes = self.heldRead, let id else { return }
        self.heldRead = nil
        self.driver.localRead(id, bytes)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            self.handOverHeldRead()
            if let id { self.driver.localInputClosed(id) }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.handOverHeldRead()
        let id = self.id
        self.id = nil
        if let id { self.driver.localClosed(id, error: true) }
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.handOverHeldRead()
        let id = self.id
        self.id = nil
        if let id { self.driver.localClosed(id, error: false) }
        context.fireChannelInactive()
    }

    // MARK: - Outbound

    func read(context: ChannelHandlerContext) {
        // Only the driver decides when the socket is read: a read asked for elsewhere
        // passes only while one the driver asked for is outstanding.
        guard self.isReadAllowed else { return }
        context.read()
    }
}

@available(*, unavailable)
extension StreamGlueHandler: Sendable {}
