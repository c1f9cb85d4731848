// SPDX-License-Identifier: Apache-2.0
import HMXCore
import NIOCore

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
