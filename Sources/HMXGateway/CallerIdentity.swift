// SPDX-License-Identifier: Apache-2.0
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// Who a caller from another host is, as the gateway that accepted it judged: the
/// remote gateway that vouched for it (by its verified client certificate, or by its
/// address) and the domain that gateway asserts. A relay sends it with its OPEN; the
/// exporting gateway believes it only from domains its export names in `relays`, and
/// passes it on to the target in PROXY v2 TLVs, marked as asserted.
///
/// On the wire (in an OPEN) it is a list of PROXY v2 style TLVs (type byte, length
/// u16 big-endian, value), each value UTF-8 of at most ``maximumValueLength`` bytes,
/// ``maximumEncodedLength`` bytes in all; unknown types are skipped.
public struct CallerIdentity: Sendable, Equatable, CustomStringConvertible {
    /// The name in the remote gateway's verified client certificate that a
    /// `trusted_proxies` entry matched, or its address.
    public var assertedBy: String
    /// The domain the remote gateway asserts (its PROXY header's domain name, or id).
    public var domain: String?
    /// The common name of the client certificate (PP2_SUBTYPE_SSL_CN).
    public var certificateName: String?
    /// The TLS version the caller's connection used (PP2_SUBTYPE_SSL_VERSION).
    public var tlsVersion: String?

    public init(assertedBy: String, domain: String?, certificateName: String?, tlsVersion: String?) {
        self.assertedBy = assertedBy
        self.domain = domain
        self.certificateName = certificateName
        self.tlsVersion = tlsVersion
    }

    public static let maximumValueLength = 255
    public static let maximumEncodedLength = 1024

    /// TLV types in an OPEN (the PROXY v2 TLVs of the same meaning, where there are).
    enum Field: UInt8 {
        case domain = 0xE2
        case assertedBy = 0xE3
        case certificateName = 0x22
        case tlsVersion = 0x21
    }

    public var description: String { "\(self.domain ?? "*")@\(self.assertedBy)" }

    public func encode(into buffer: inout ByteBuffer) {
        let fields: [(Field, String?)] = [
            (.assertedBy, self.assertedBy), (.domain, self.domain), (.certificateName, self.certificateName),
            (.tlsVersion, self.tlsVersion),
        ]
        for case (let field, let value?) in fields {
            let bytes = Array(value.utf8.prefix(Self.maximumValueLength))
            buffer.writeInteger(field.rawValue)
            buffer.writeInteger(UInt16(bytes.count))
            buffer.writeBytes(bytes)
        }
    }

    /// Why an encoded identity is refused.
    public enum DecodeError: Error, Equatable, Sendable {
        case tooLong
        case truncated
        case valueTooLong
        case notUTF8
        case missingAssertedBy
    }

    /// Decodes what ``encode(into:)`` wrote; never reads beyond `bytes`.
    public static func decode(_ bytes: ByteBuffer) throws(DecodeError) -> CallerIdentity {
        guard bytes.readableBytes <= Self.maximumEncodedLength else { throw .tooLong }
        var bytes = bytes
        var values: [Field: String] = [:]
        while bytes.readableBytes > 0 {
            guard let type = bytes.readInteger(as: UInt8.self), let length = bytes.readInteger(as: UInt16.self)
            else { throw .truncated }
            guard length <= Self.maximumValueLength else { throw .valueTooLong }
            guard let value = bytes.readBytes(length: Int(length)) else { throw .truncated }
            guard let field = Field(rawValue: type) else { continue }
            guard let text = String(validating: value, as: UTF8.self) else { throw .notUTF8 }
            values[field] = text
        }
        guard let assertedBy = values[.assertedBy] else { throw .missingAssertedBy }
        return CallerIdentity(
            assertedBy: assertedBy,
            domain: values[.domain],
            certificateName: values[.certificateName],
            tlsVersion: values[.tlsVersion]
        )
    }
}

/// An IPv4 or IPv6 address prefix (`192.0.2.0/24`, `2001:db8::/32`, or one address).
public struct IPNetwork: Sendable, Equatable, CustomStringConvertible {
    public let bytes: [UInt8]
    public let length: Int

    /// `ADDRESS` or `ADDRESS/LENGTH`, or nil if it is neither.
    public init?(_ text: String) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard (1...2).contains(parts.count), let bytes = Self.address(String(parts[0])) else { return nil }
        let bits = bytes.count * 8
        if parts.count == 2 {
            guard let length = Int(parts[1]), (0...bits).contains(length) else { return nil }
            self.length = length
        } else {
            self.length = bits
        }
        self.bytes = bytes
    }

    /// The bytes of an address in text, IPv4 or IPv6.
    static func address(_ text: String) -> [UInt8]? {
        if text.contains(":") {
            var bytes = [UInt8](repeating: 0, count: 16)
            return inet_pton(AF_INET6, text, &bytes) == 1 ? bytes : nil
        }
        var bytes = [UInt8](repeating: 0, count: 4)
        return inet_pton(AF_INET, text, &bytes) == 1 ? bytes : nil
    }

    /// True if `address` (4 or 16 bytes) lies in this prefix. An IPv4-mapped IPv6
    /// address counts as its IPv4 address.
    public func contains(_ address: [UInt8]) -> Bool {
        var address = address
        if address.count == 16, self.bytes.count == 4, address.prefix(12) == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 255, 255] {
            address = Array(address.suffix(4))
        }
        guard address.count == self.bytes.count else { return false }
        for bit in 0..<self.length {
            let mask = UInt8(0x80) >> UInt8(bit % 8)
            if address[bit / 8] & mask != self.bytes[bit / 8] & mask { return false }
        }
        return true
    }

    /// The address bytes of a socket address, for ``contains(_:)`` (nil: not IP).
    public static func bytes(of address: SocketAddress?) -> [UInt8]? {
        guard let text = address?.ipAddress else { return nil }
        return Self.address(text)
    }

    public var description: String {
        "\(SourceAddressPrefix.text(self.bytes))/\(self.length)"
    }
}
