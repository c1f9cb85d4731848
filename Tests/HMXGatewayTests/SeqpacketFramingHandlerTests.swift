// SPDX-License-Identifier: Apache-2.0
import NIOCore
import NIOEmbedded
import Testing

@testable import HMXGateway

/// SEQPACKET records over a byte stream, on an `EmbeddedChannel`: the socket is the
/// channel's head, the glue is the test (it writes stream bytes and reads framed ones).
@Suite("SEQPACKET framing")
struct SeqpacketFramingHandlerTests {
    /// Holds each record write until the test lets it complete (a socket that takes
    /// records one at a time, when the test says).
    final class SlowSocket: ChannelOutboundHandler {
        typealias OutboundIn = ByteBuffer
        var written: [ByteBuffer] = []
        var pending: [(ByteBuffer, PromiseBox)] = []
        var closes: [CloseMode] = []

        func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
            self.pending.append((Self.unwrapOutboundIn(data), PromiseBox(promise)))
        }

        func flush(context: ChannelHandlerContext) {}

        func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
            self.closes.append(mode)
            promise?.succeed(())
        }

        /// The socket takes the oldest record.
        func take() {
            let (record, promise) = self.pending.removeFirst()
            self.written.append(record)
            promise.promise?.succeed(())
        }
    }

    struct PromiseBox {
        var promise: EventLoopPromise<Void>?
        init(_ promise: EventLoopPromise<Void>?) { self.promise = promise }
    }

    static func framed(_ records: [[UInt8]]) -> ByteBuffer {
        var buffer = ByteBuffer()
        for record in records {
            buffer.writeInteger(UInt32(record.count))
            buffer.writeBytes(record)
        }
        return buffer
    }

    @Test("each record read becomes its length and bytes in the stream; an over-long one is an error")
    func socketToStream() throws {
        let channel = EmbeddedChannel(handler: SeqpacketFramingHandler())
        try channel.writeInbound(ByteBuffer(bytes: [1, 2, 3]))
        try channel.writeInbound(ByteBuffer(bytes: [9]))
        #expect(try channel.readInbound(as: ByteBuffer.self) == Self.framed([[1, 2, 3]]))
        #expect(try channel.readInbound(as: ByteBuffer.self) == Self.framed([[9]]))
        // A read that filled the buffer was a longer record, cut by the kernel.
        #expect(throws: SeqpacketFramingHandler.RecordTooLarge.self) {
            try channel.writeInbound(ByteBuffer(repeating: 0, count: SeqpacketFramingHandler.readSize))
        }
    }

    @Test("the stream is cut back into records, each written alone and in order; credit returns as each is written")
    func streamToSocket() throws {
        let socket = SlowSocket()
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandlers([socket, SeqpacketFramingHandler()])
        // Two records and the first half of a third, in writes that do not follow
        // record boundaries.
        var stream = Self.framed([[1, 1], [2, 2, 2], [3, 3, 3, 3]])
        let first = stream.readSlice(length: 5)!  // header and first byte of record 1
        let second = stream.readSlice(length: 11)!  // rest of 1, all of 2, header of 3 and 1 byte
        let third = stream  // the rest of record 3
        let done = (
            channel.eventLoop.makePromise(of: Void.self), channel.eventLoop.makePromise(of: Void.self),
            channel.eventLoop.makePromise(of: Void.self)
        )
        var completed: [Int] = []
        done.0.futureResult.assumeIsolated().whenSuccess { completed.append(1) }
        done.1.futureResult.assumeIsolated().whenSuccess { completed.append(2) }
        done.2.futureResult.assumeIsolated().whenSuccess { completed.append(3) }

        channel.write(first, promise: done.0)
        // Part of a record: taken at once (a record larger than the window must come).
        #expect(completed == [1])
        #expect(socket.pending.isEmpty)
        channel.write(second, promise: done.1)
        // Records 1 and 2 are whole: one write at a time.
        #expect(socket.pending.map { Array($0.0.readableBytesView) } == [[1, 1]])
        #expect(completed == [1], "its bytes wait for their records to be written")
        socket.take()
        #expect(socket.pending.map { Array($0.0.readableBytesView) } == [[2, 2, 2]])
        #expect(completed == [1])
        socket.take()
        // Records 1 and 2 written; the rest of the write is record 3's start.
        #expect(completed == [1, 2])
        channel.write(third, promise: done.2)
        socket.take()
        #expect(completed == [1, 2, 3])
        #expect(socket.written.map { Array($0.readableBytesView) } == [[1, 1], [2, 2, 2], [3, 3, 3, 3]])
        // Half-close after the last record.
        channel.close(mode: .output, promise: nil)
        #expect(socket.closes == [.output])
    }

    @Test("a half-close waits for the records before it; one inside a record, or a length over the limit, is an error")
    func endsAndLimits() throws {
        let socket = SlowSocket()
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandlers([socket, SeqpacketFramingHandler()])
        channel.write(Self.framed([[5]]), promise: nil)
        channel.close(mode: .output, promise: nil)
        #expect(socket.closes.isEmpty, "the record is not written yet")
        socket.take()
        #expect(socket.closes == [.output])

        let cut = EmbeddedChannel()
        try cut.pipeline.syncOperations.addHandlers([SlowSocket(), SeqpacketFramingHandler()])
        var half = Self.framed([[1, 2, 3, 4]])
        half.moveWriterIndex(to: 6)
        cut.write(half, promise: nil)
        cut.close(mode: .output, promise: nil)
        #expect(throws: SeqpacketFramingHandler.StreamEndedInsideRecord.self) { try cut.throwIfErrorCaught() }

        let long = EmbeddedChannel()
        try long.pipeline.syncOperations.addHandlers([SlowSocket(), SeqpacketFramingHandler()])
        var header = ByteBuffer()
        header.writeInteger(UInt32(SeqpacketFramingHandler.maximumRecord + 1))
        let failed = long.eventLoop.makePromise(of: Void.self)
        var failure: (any Error)?
        failed.futureResult.assumeIsolated().whenFailure { failure = $0 }
        long.write(header, promise: failed)
        #expect(failure is SeqpacketFramingHandler.RecordTooLarge)
        #expect(throws: SeqpacketFramingHandler.RecordTooLarge.self) { try long.throwIfErrorCaught() }
    }
}
