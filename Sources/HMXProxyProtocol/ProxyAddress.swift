// SPDX-License-Identifier: Apache-2.0

/// An IPv4 address as it travels in a PROXY header: four bytes, network order.
public struct ProxyIPv4Address: Hashable, Sendable, CustomStringConvertible {
    public static let byteCount = 4

    /// The address as a number, most significant byte first on the wire
    /// (`127.0.0.1` is `0x7F00_0001`).
    public var value: UInt32

    public init(value: UInt32) {
        self.value = value
    }

    public init(_ a: UInt8, _ b: UInt8, _ c: UInt8, _ d: UInt8) {
        self.value = UInt32(a) << 24 | UInt32(b) << 16 | UInt32(c) << 8 | UInt32(d)
    }

    /// The four bytes in wire order.
    public var bytes: [UInt8] {
        [
            UInt8(truncatingIfNeeded: self.value >> 24), UInt8(truncatingIfNeeded: self.value >> 16),
            UInt8(truncatingIfNeeded: self.value >> 8), UInt8(truncatingIfNeeded: self.value),
        ]
    }

    public var description: String {
        self.bytes.map(String.init).joined(separator: ".")
    }
}

/// An IPv6 address as it travels in a PROXY header: sixteen bytes, network order.
public struct ProxyIPv6Address: Hashable, Sendable, CustomStringConvertible {
    public static let byteCount = 16

    /// The first eight bytes, most significant first.
    public var high: UInt64
    /// The last eight bytes, most significant first.
    public var low: UInt64

    public init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    /// From exactly sixteen bytes in wire order; `nil` for any other count.
    public init?(bytes: some Collection<UInt8>) {
        guard bytes.count == Self.byteCount else { return nil }
        var high: UInt64 = 0
        var low: UInt64 = 0
        for (index, byte) in bytes.enumerated() {
            if index < 8 {
                high = high << 8 | UInt64(byte)
            } else {
                low = low << 8 | UInt64(byte)
            }
        }
        self.init(high: high, low: low)
    }

    /// `::ffff:a.b.c.d`, how an IPv4 source is written next to an IPv6 destination.
    public init(ipv4Mapped address: ProxyIPv4Address) {
        self.init(high: 0, low: 0xFFFF_0000_0000 | UInt64(address.value))
    }

    /// `::1`.
    public static let loopback = ProxyIPv6Address(high: 0, low: 1)

    /// The sixteen bytes in wire order.
    public var bytes: [UInt8] {
        (0..<16).map { index in
            let word = index < 8 ? self.high : self.low
            return UInt8(truncatingIfNeeded: word >> (8 * (7 - UInt64(index % 8))))
        }
    }

    /// RFC 5952 text: lower-case hexadecimal, no leading zeros, the longest run of two
    /// or more zero groups (the first of equal runs) written as `::`.
    public var description: String {
        let bytes = self.bytes
        let groups = (0..<8).map { UInt16(bytes[2 * $0]) << 8 | UInt16(bytes[2 * $0 + 1]) }
        var bestStart = -1
        var bestLength = 1
        var index = 0
        while index < 8 {
            guard groups[index] == 0 else {
                index += 1
                continue
            }
            var end = index
            while end < 8, groups[end] == 0 { end += 1 }
            if end - index > bestLength {
                bestStart = index
                bestLength = end - index
            }
            index = end
        }
        let hex = groups.map { String($0, radix: 16) }
        guard bestStart >= 0 else { return hex.joined(separator: ":") }
        let head = hex[..<bestStart].joined(separator: ":")
        let tail = hex[(bestStart + bestLength)...].joined(separator: ":")
        return head + "::" + tail
    }
}

/// A Unix socket address block entry: exactly 108 bytes, the path NUL-padded.
/// The raw bytes are kept so that a parsed header encodes back unchanged.
public struct ProxyUnixAddress: Hashable, Sendable {
    public static let byteCount = 108

    /// Exactly ``byteCount`` bytes.
    public let rawValue: [UInt8]

    /// From exactly 108 raw bytes; `nil` for any other count.
    public init?(rawValue: [UInt8]) {
        guard rawValue.count == Self.byteCount else { return nil }
        self.rawValue = rawValue
    }

    /// A path of at most 108 bytes of UTF-8, padded with NULs; `nil` if it is longer.
    public init?(path: String) {
        let bytes = Array(path.utf8)
        guard bytes.count <= Self.byteCount else { return nil }
        self.rawValue = bytes + [UInt8](repeating: 0, count: Self.byteCount - bytes.count)
    }

    /// The bytes before the first NUL, decoded as UTF-8 (invalid sequences repaired).
    public var path: String {
        String(decoding: self.rawValue.prefix { $0 != 0 }, as: UTF8.self)
    }
}
