// SPDX-License-Identifier: Apache-2.0
import HMXCore
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// Where an export's connections to its target come from (`source_address:`): for each
/// source domain, the address of its domain id within a prefix, so that an unmodified
/// server's access control and logs see which domain connected. `per_domain` is
/// 127.77.0.0/16 (Linux routes all of 127.0.0.0/8 to the loopback device): domain 1
/// connects from 127.77.0.1, domain 300 from 127.77.1.44.
public struct SourceAddressPrefix: Sendable, Equatable, CustomStringConvertible {
    /// 4 bytes (IPv4) or 16 (IPv6), host bits zero.
    public let bytes: [UInt8]
    public let length: Int

    /// 127.77.0.0/16.
    public static let perDomain = SourceAddressPrefix(bytes: [127, 77, 0, 0], length: 16)

    /// Domain ids go up to 0x7FEF: 15 bits are left for them.
    static let domainBits = 15

    init(bytes: [UInt8], length: Int) {
        self.bytes = bytes
        self.length = length
    }

    public var isIPv6: Bool { self.bytes.count == 16 }

    /// `per_domain`, or `ADDRESS/LENGTH` (IPv4 up to /17, IPv6 up to /113, host bits zero).
    public static func parse(_ text: String) -> Result<SourceAddressPrefix, Endpoint.Malformed> {
        if text == "per_domain" { return .success(.perDomain) }
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let length = Int(parts[1]) else {
            let reason = "expected per_domain or a prefix ADDRESS/LENGTH; found '\(text)'"
            return .failure(Endpoint.Malformed(reason: reason))
        }
        var bytes: [UInt8]
        if parts[0].contains(":") {
            bytes = [UInt8](repeating: 0, count: 16)
            guard inet_pton(AF_INET6, String(parts[0]), &bytes) == 1 else {
                return .failure(Endpoint.Malformed(reason: "'\(parts[0])' is not an IPv6 address"))
            }
        } else {
            bytes = [UInt8](repeating: 0, count: 4)
            guard inet_pton(AF_INET, String(parts[0]), &bytes) == 1 else {
                return .failure(Endpoint.Malformed(reason: "'\(parts[0])' is not an IPv4 address"))
            }
        }
        let bits = bytes.count * 8
        guard (8...(bits - Self.domainBits)).contains(length) else {
            return .failure(
                Endpoint.Malformed(
                    reason:
                        "the prefix length must be 8 to \(bits - Self.domainBits): domain ids need \(Self.domainBits) bits"
                )
            )
        }
        for bit in length..<bits where bytes[bit / 8] & (0x80 >> UInt8(bit % 8)) != 0 {
            return .failure(Endpoint.Malformed(reason: "\(text) has bits set after its first \(length)"))
        }
        return .success(SourceAddressPrefix(bytes: bytes, length: length))
    }

    /// The address `domain` connects from.
    public func address(for domain: DomainID) -> [UInt8] {
        var bytes = self.bytes
        bytes[bytes.count - 2] |= UInt8(domain.rawValue >> 8)
        bytes[bytes.count - 1] |= UInt8(domain.rawValue & 0xFF)
        return bytes
    }

    /// The address of `domain` in text.
    public func text(for domain: DomainID) -> String {
        Self.text(self.address(for: domain))
    }

    /// The socket address (port 0: any) `domain` connects from.
    public func socketAddress(for domain: DomainID) throws -> SocketAddress {
        try SocketAddress(ipAddress: self.text(for: domain), port: 0)
    }

    static func text(_ bytes: [UInt8]) -> String {
        var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        _ = inet_ntop(bytes.count == 16 ? AF_INET6 : AF_INET, bytes, &buffer, socklen_t(buffer.count))
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    public var description: String { "\(Self.text(self.bytes))/\(self.length)" }
}
