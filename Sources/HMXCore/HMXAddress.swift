// SPDX-License-Identifier: Apache-2.0

/// A Xen domain id (`domid_t`).
public struct DomainID: RawRepresentable, Hashable, Sendable, Comparable, CustomStringConvertible {
    public var rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public init(_ value: UInt16) { self.rawValue = value }

    /// `XEN_ARGO_DOMID_ANY` (`DOMID_INVALID`): a wildcard partner or "fill in my id".
    public static let any = DomainID(0x7FF4)
    /// `DOMID_SELF`. Argo does not resolve it: sending to it fails with ESRCH.
    public static let selfDomain = DomainID(0x7FF0)
    /// The first id reserved by Xen (`DOMID_FIRST_RESERVED`); real domains are below it.
    public static let firstReserved = DomainID(0x7FF0)

    /// True for an id a real domain can have.
    public var isOrdinary: Bool { self.rawValue < Self.firstReserved.rawValue }

    public var description: String { self == .any ? "any" : String(self.rawValue) }

    public static func < (lhs: DomainID, rhs: DomainID) -> Bool { lhs.rawValue < rhs.rawValue }
}

/// An Argo port (`xen_argo_port_t`): any 32-bit value, no reserved ranges.
public typealias HMXPort = UInt32

/// An Argo address (`xen_argo_addr`): a domain and a port.
public struct HMXAddress: Hashable, Sendable, CustomStringConvertible {
    public var domain: DomainID
    public var port: HMXPort

    public init(domain: DomainID, port: HMXPort) {
        self.domain = domain
        self.port = port
    }

    public var description: String { "\(self.domain):\(self.port)" }

    /// Parses `DOMID:PORT` (decimal, or hex with a `0x` prefix).
    public init?(parsing text: some StringProtocol) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2,
            let domain = parseInteger(parts[0], as: UInt16.self),
            let port = parseInteger(parts[1], as: UInt32.self)
        else { return nil }
        self.init(domain: DomainID(domain), port: port)
    }
}

/// Parses a decimal or `0x`-prefixed hexadecimal unsigned integer.
public func parseInteger<T: FixedWidthInteger & UnsignedInteger>(_ text: some StringProtocol, as: T.Type) -> T? {
    if text.hasPrefix("0x") || text.hasPrefix("0X") {
        return T(text.dropFirst(2), radix: 16)
    }
    return T(text, radix: 10)
}
