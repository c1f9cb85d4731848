// SPDX-License-Identifier: Apache-2.0
import HMXCore
import NIOCore

/// Splits the byte stream of a link connection into ``LinkWire/Frame``s.
///
/// Bounded by construction: every frame kind has a fixed length of at most 48 bytes,
/// so at most one partial frame is ever buffered; anything malformed is an error and
/// the connection is closed.
struct LinkFrameDecoder: ByteToMessageDecoder {
    typealias InboundOut = LinkWire.Frame

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        let result = try buffer.withUnsafeReadableBytes { bytes in try LinkWire.parse(bytes) }
        switch result {
        case .needMore:
            return .needMoreData
        case .frame(let frame, let consumed):
            buffer.moveReaderIndex(forwardBy: consumed)
            context.fireChannelRead(Self.wrapInboundOut(frame))
            return .continue
        }
    }

    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        while try self.decode(context: context, buffer: &buffer) == .continue {}
        return .needMoreData
    }
}

extension ByteBuffer {
    /// Appends an encoded link frame.
    @inlinable
    mutating func writeLinkFrame(_ frame: LinkWire.Frame) {
        let length = frame.kind.frameLength
        self.reserveCapacity(minimumWritableBytes: length)
        self.writeWithUnsafeMutableBytes(minimumWritableBytes: length) { raw in
            LinkWire.encode(frame, into: raw)
        }
    }
}
