// SPDX-License-Identifier: Apache-2.0
import NIOCore

/// Splits the byte stream of a link connection into ``LinkWire/Frame``s, handing each
/// to its caller as it is parsed (no per-frame pipeline event).
///
/// Bounded by construction: every frame kind has a fixed length of at most 48 bytes,
/// so less than one frame is kept between reads; anything malformed is an error and
/// the connection is closed.
public struct LinkFrameSplitter {
    /// Bytes of a frame that began in an earlier read.
    private var pending = ByteBuffer()

    public init() {}

    /// Parses every complete frame in `pending` + `input` and calls `body` for each,
    /// in order; keeps the bytes of an incomplete last frame for the next read.
    public mutating func split(_ input: ByteBuffer, _ body: (LinkWire.Frame) throws -> Void) throws {
        var bytes = input
        if self.pending.readableBytes > 0 {
            // Rare: a frame straddled two reads.
            self.pending.writeBuffer(&bytes)
            bytes = self.pending
        }
        self.pending = ByteBuffer()
        try Self.parseFrames(in: &bytes, body)
        if bytes.readableBytes > 0 {
            // Less than one frame: copied, so that the read buffer can be reused.
            self.pending = ByteBufferAllocator().buffer(capacity: 64)
            self.pending.writeBuffer(&bytes)
        }
    }

    private static func parseFrames(in buffer: inout ByteBuffer, _ body: (LinkWire.Frame) throws -> Void) throws {
        while true {
            let result = try buffer.withUnsafeReadableBytes { bytes in try LinkWire.parse(bytes) }
            guard case .frame(let frame, let consumed) = result else { return }
            buffer.moveReaderIndex(forwardBy: consumed)
            try body(frame)
        }
    }

    /// Bytes held of an incomplete frame.
    public var pendingBytes: Int { self.pending.readableBytes }
}
