// SPDX-License-Identifier: Apache-2.0
import CHMXShims
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

/// Carries a SEQPACKET socket's records over an HMX stream with their boundaries: each
/// record read becomes its length (4 bytes, big-endian) and its bytes in the stream;
/// the stream from the peer is cut back into records, each written to the socket with
/// a write of its own (one at a time: writes gathered into one `writev` would be one
/// record). The stream keeps what it promises: in order, flow-controlled, and a reset on
/// both ends for anything that cannot be carried whole (a record larger than
/// ``maximumRecord``, a stream that ends inside a record).
///
/// Sits between the socket and the ``StreamGlueHandler``. Bytes of the peer's stream
/// count as written (their credit goes back) once the record they belong to is written,
/// or at once while it is incomplete (a record larger than the window must be able to
/// arrive whole); so what it holds is bounded by one record plus the window.
final class SeqpacketFramingHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// The largest record carried: at least what a Unix SEQPACKET socket takes by
    /// default (its send buffer, 208 KiB).
    static let maximumRecord = 256 * 1024
    /// A read buffer one byte larger: a read that fills it was a longer record, cut.
    static let readSize = maximumRecord + 1

    struct RecordTooLarge: Error, CustomStringConvertible {
        var length: Int
        var description: String { "a SEQPACKET record of \(self.length) bytes or more (at most \(maximumRecord))" }
    }

    struct StreamEndedInsideRecord: Error, CustomStringConvertible {
        var description: String { "the stream ended inside a SEQPACKET record" }
    }

    /// Bytes from the peer's stream not yet cut into records.
    private var incoming = ByteBuffer()
    /// Records cut out and not yet written, with the stream offset at their end.
    private var records = CircularBuffer<(record: ByteBuffer, end: Int)>()
    /// The glue's writes, with the stream offset at their end.
    private var promises = CircularBuffer<(end: Int, promise: EventLoopPromise<Void>?)>()
    /// Stream bytes received from the glue in all.
    private var received = 0
    /// Stream offset up to which records are cut out.
    private var cut = 0
    private var isWriting = false
    /// The glue asked to shut the output once the records are written.
    private var outputClosePending: EventLoopPromise<Void>?

    // MARK: - Socket to stream

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let record = Self.unwrapInboundIn(data)
        guard record.readableBytes <= Self.maximumRecord else {
            context.fireErrorCaught(RecordTooLarge(length: record.readableBytes))
            return
        }
        var framed = context.channel.allocator.buffer(capacity: 4 + record.readableBytes)
        framed.writeInteger(UInt32(record.readableBytes))
        framed.writeImmutableBuffer(record)
        context.fireChannelRead(Self.wrapInboundOut(framed))
    }

    // MARK: - Stream to socket

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        var bytes = Self.unwrapOutboundIn(data)
        self.received += bytes.readableBytes
        self.incoming.writeBuffer(&bytes)
        self.promises.append((self.received, promise))
        while self.incoming.readableBytes >= 4 {
            let length = Int(self.incoming.getInteger(at: self.incoming.readerIndex, as: UInt32.self)!)
            guard length <= Self.maximumRecord else {
                // The peer's stream is not records: reset both ends.
                return self.fail(context, RecordTooLarge(length: length))
            }
            guard self.incoming.readableBytes >= 4 + length else { break }
            self.incoming.moveReaderIndex(forwardBy: 4)
            let record = self.incoming.readSlice(length: length)!
            self.cut += 4 + length
            self.records.append((record, self.cut))
        }
        self.incoming.discardReadBytes()
        self.completeWrites()
        self.writeNext(context)
    }

    func flush(context: ChannelHandlerContext) {
        // Each record is flushed as it is written.
    }

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        guard mode == .output else {
            return context.close(mode: mode, promise: promise)
        }
        if self.incoming.readableBytes > 0 {
            return self.fail(context, StreamEndedInsideRecord())
        }
        if self.records.isEmpty && !self.isWriting {
            context.close(mode: .output, promise: promise)
        } else {
            self.outputClosePending = promise ?? context.eventLoop.makePromise()
        }
    }

    /// Completes the glue's writes whose bytes are written (or part of the record
    /// still incomplete).
    private func completeWrites() {
        let done = self.records.first.map { $0.end - 4 - $0.record.readableBytes } ?? self.received
        while let first = self.promises.first, first.end <= done {
            self.promises.removeFirst()
            first.promise?.succeed(())
        }
    }

    private func writeNext(_ context: ChannelHandlerContext) {
        guard !self.isWriting, let next = self.records.first else {
            if !self.isWriting, self.records.isEmpty, let close = self.outputClosePending {
                self.outputClosePending = nil
                context.close(mode: .output, promise: close)
            }
            return
        }
        self.isWriting = true
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        context.writeAndFlush(Self.wrapOutboundOut(next.record)).whenComplete { result in
            let (handler, context) = loopBound.value
            handler.isWriting = false
            switch result {
            case .success:
                handler.records.removeFirst()
                handler.completeWrites()
                handler.writeNext(context)
            case .failure(let error):
                handler.fail(context, error)
            }
        }
    }

    private func fail(_ context: ChannelHandlerContext, _ error: any Error) {
        let promises = self.promises
        self.promises.removeAll()
        self.records.removeAll()
        self.incoming.clear()
        for (_, promise) in promises { promise?.fail(error) }
        self.outputClosePending?.fail(error)
        self.outputClosePending = nil
        context.fireErrorCaught(error)
    }

    // MARK: - Sockets

    /// A listening SEQPACKET socket at `path` (a stale socket there is replaced).
    static func listen(path: String) throws -> CInt {
        var status = stat()
        if lstat(path, &status) == 0, (status.st_mode & S_IFMT) == S_IFSOCK { unlink(path) }
        let descriptor = chmx_unix_seqpacket_listen(path, 1024)
        guard descriptor >= 0 else { throw IOError(errnoCode: errno, reason: "seqpacket:\(path)") }
        return descriptor
    }

    /// A SEQPACKET socket connected to `path`.
    static func connect(path: String) throws -> CInt {
        let descriptor = chmx_unix_seqpacket_connect(path)
        guard descriptor >= 0 else { throw IOError(errnoCode: errno, reason: "connect to seqpacket:\(path)") }
        return descriptor
    }

    /// Makes `channel` (a SEQPACKET socket's) carry records over its stream: a read
    /// buffer that takes the largest record whole, and the framing before the glue.
    static func configure(_ channel: any Channel) throws {
        try channel.syncOptions?.setOption(.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: readSize))
        try channel.pipeline.syncOperations.addHandler(SeqpacketFramingHandler(), position: .first)
    }
}

@available(*, unavailable)
extension SeqpacketFramingHandler: Sendable {}
