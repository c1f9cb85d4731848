// SPDX-License-Identifier: Apache-2.0

/// Why a PROXY v2 header could not be encoded or parsed. Each case is a distinct,
/// stable reason, so that logs and metrics can count them.
public enum ProxyProtocolError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The first twelve bytes are not the v2 signature.
    case invalidSignature
    /// The version nibble is not 2.
    case unsupportedVersion(UInt8)
    /// The command nibble is neither LOCAL nor PROXY.
    case invalidCommand(UInt8)
    /// The family and transport byte is not one of the seven the specification allows.
    case invalidFamily(UInt8)
    /// The header (16 bytes plus its length field) is longer than the parser accepts,
    /// or longer than the format can express when encoding.
    case headerTooLong(length: Int, limit: Int)
    /// The length field is smaller than the address block of the family.
    case truncatedAddressBlock(length: Int, required: Int)
    /// A TLV runs past the end of the header, at this offset from the header's start.
    case truncatedTLV(offset: Int)
    /// A CRC32c TLV does not hold four bytes, or there is more than one.
    case invalidChecksumTLV
    /// The CRC32c TLV does not match the header.
    case checksumMismatch(expected: UInt32, found: UInt32)

    public var description: String {
        switch self {
        case .invalidSignature: "not a PROXY v2 signature"
        case .unsupportedVersion(let version): "unsupported PROXY protocol version \(version)"
        case .invalidCommand(let command): "invalid PROXY v2 command \(command)"
        case .invalidFamily(let byte): "invalid PROXY v2 family/transport byte 0x\(String(byte, radix: 16))"
        case .headerTooLong(let length, let limit): "PROXY v2 header of \(length) bytes exceeds the limit of \(limit)"
        case .truncatedAddressBlock(let length, let required):
            "PROXY v2 length \(length) is shorter than the \(required)-byte address block"
        case .truncatedTLV(let offset): "PROXY v2 TLV at offset \(offset) runs past the header"
        case .invalidChecksumTLV: "PROXY v2 CRC32c TLV is not exactly one 4-byte value"
        case .checksumMismatch(let expected, let found):
            "PROXY v2 CRC32c mismatch: computed 0x\(String(expected, radix: 16)), header has 0x\(String(found, radix: 16))"
        }
    }
}
