// SPDX-License-Identifier: Apache-2.0

/// One type-length-value extension after the address block: one byte of type, a
/// two-byte big-endian length, then the value.
public struct ProxyTLV: Hashable, Sendable {
    /// The TLV type byte. The specification's types are provided as constants; the
    /// range 0xE0…0xEF is reserved for application-specific data (the HMX TLVs).
    public struct Kind: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
        public var rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }

        public static let alpn = Kind(rawValue: 0x01)
        public static let authority = Kind(rawValue: 0x02)
        /// A CRC32c of the whole header; the encoder computes it, the parser checks it.
        public static let crc32c = Kind(rawValue: 0x03)
        /// Padding the receiver ignores.
        public static let noop = Kind(rawValue: 0x04)
        public static let uniqueID = Kind(rawValue: 0x05)
        public static let ssl = Kind(rawValue: 0x20)
        public static let netns = Kind(rawValue: 0x30)
        /// The first type of the range reserved for applications.
        public static let firstCustom = Kind(rawValue: 0xE0)
        /// The last type of the range reserved for applications.
        public static let lastCustom = Kind(rawValue: 0xEF)

        public var description: String { "0x" + String(self.rawValue, radix: 16, uppercase: true) }
    }

    public var type: Kind
    /// At most 65535 bytes; the whole header must also fit in 16 + 65535 bytes.
    public var value: [UInt8]

    public init(type: Kind, value: [UInt8]) {
        self.type = type
        self.value = value
    }

    /// `PP2_TYPE_AUTHORITY`: the host name the client asked for (SNI), UTF-8.
    public static func authority(_ hostName: String) -> ProxyTLV {
        ProxyTLV(type: .authority, value: Array(hostName.utf8))
    }

    /// `PP2_TYPE_UNIQUE_ID`: an opaque identifier of the connection, at most 128 bytes.
    public static func uniqueID(_ bytes: [UInt8]) -> ProxyTLV {
        ProxyTLV(type: .uniqueID, value: bytes)
    }

    /// `PP2_TYPE_CRC32C`: a placeholder the encoder fills with the header's checksum.
    public static var crc32c: ProxyTLV {
        ProxyTLV(type: .crc32c, value: [0, 0, 0, 0])
    }

    /// `PP2_TYPE_NOOP`: `count` bytes of padding.
    public static func noop(count: Int) -> ProxyTLV {
        ProxyTLV(type: .noop, value: [UInt8](repeating: 0, count: count))
    }

    /// Bytes this TLV takes on the wire.
    public var encodedLength: Int { 3 + self.value.count }
}
