// SPDX-License-Identifier: Apache-2.0
import NIOCore

/// Bytes from hexadecimal text; spaces and newlines are ignored.
func hex(_ text: String) -> [UInt8] {
    let digits = Array(text.filter { !$0.isWhitespace })
    return stride(from: 0, to: digits.count, by: 2).map { UInt8(String(digits[$0...$0 + 1]), radix: 16)! }
}

extension ByteBuffer {
    var allBytes: [UInt8] { self.getBytes(at: self.readerIndex, length: self.readableBytes) ?? [] }
}

/// The v2 signature, as the specification prints it.
let signatureHex = "0D0A0D0A 000D0A51 5549540A"
