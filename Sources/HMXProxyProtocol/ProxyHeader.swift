// SPDX-License-Identifier: Apache-2.0

/// A PROXY protocol version 2 header, as defined in section 2.2 of haproxy's
/// `proxy-protocol.txt`.
///
/// The gateway writes one of these at the start of a connection to an export's target
/// so that an unmodified server (nginx, HAProxy, PostgreSQL behind pgbouncer, …) learns
/// who is really on the other side: the authenticated source domain, carried as HMX TLVs
/// and as a synthetic source address (see ``ProxyHeader/hmx(domainID:domainName:connectionID:destination:extraTLVs:)``).
///
/// The value is plain data: ``encode(into:)`` writes it and ``parse(from:maximumLength:)``
/// reads it back. Every header that `parse` accepts encodes to exactly the bytes it was
/// parsed from.
public struct ProxyHeader: Hashable, Sendable {
    /// `PROXY` for a relayed connection, `LOCAL` for one the proxy made on its own
    /// behalf (health checks): the receiver then uses the real connection endpoints.
    public var command: ProxyCommand
    /// Address family, transport and endpoints of the original connection.
    public var addresses: ProxyAddresses
    /// Type-length-value extensions, in wire order.
    public var tlvs: [ProxyTLV]

    public init(command: ProxyCommand = .proxy, addresses: ProxyAddresses, tlvs: [ProxyTLV] = []) {
        self.command = command
        self.addresses = addresses
        self.tlvs = tlvs
    }

    /// A `LOCAL` header without addresses: what a proxy sends for its own connections.
    public static func local(tlvs: [ProxyTLV] = []) -> ProxyHeader {
        ProxyHeader(command: .local, addresses: .unspecified, tlvs: tlvs)
    }

    /// The first TLV of a type, if any.
    public func firstTLV(_ type: ProxyTLV.Kind) -> ProxyTLV? {
        self.tlvs.first { $0.type == type }
    }
}

/// The low nibble of the 13th byte.
public enum ProxyCommand: UInt8, Hashable, Sendable {
    case local = 0x0
    case proxy = 0x1
}

/// The endpoints of the original connection together with the family and transport
/// byte (the 14th byte). Only the seven combinations the specification allows can be
/// expressed; any other byte is rejected by the parser.
public enum ProxyAddresses: Hashable, Sendable {
    /// `\x00` UNSPEC: no address block (LOCAL connections, or a protocol the sender
    /// cannot describe).
    case unspecified
    /// `\x11` TCP over IPv4.
    case tcp4(ProxyEndpoints<ProxyIPv4Address>)
    /// `\x12` UDP over IPv4.
    case udp4(ProxyEndpoints<ProxyIPv4Address>)
    /// `\x21` TCP over IPv6.
    case tcp6(ProxyEndpoints<ProxyIPv6Address>)
    /// `\x22` UDP over IPv6.
    case udp6(ProxyEndpoints<ProxyIPv6Address>)
    /// `\x31` Unix stream socket.
    case unixStream(source: ProxyUnixAddress, destination: ProxyUnixAddress)
    /// `\x32` Unix datagram socket.
    case unixDatagram(source: ProxyUnixAddress, destination: ProxyUnixAddress)

    /// The family (high nibble) and transport (low nibble) byte.
    public var familyAndTransport: UInt8 {
        switch self {
        case .unspecified: 0x00
        case .tcp4: 0x11
        case .udp4: 0x12
        case .tcp6: 0x21
        case .udp6: 0x22
        case .unixStream: 0x31
        case .unixDatagram: 0x32
        }
    }

    /// Length of the address block on the wire.
    public var encodedLength: Int {
        Self.addressBlockLength(familyAndTransport: self.familyAndTransport) ?? 0
    }

    /// The address block length for a valid family and transport byte, `nil` for an
    /// invalid one.
    static func addressBlockLength(familyAndTransport byte: UInt8) -> Int? {
        switch byte {
        case 0x00: 0
        case 0x11, 0x12: 2 * ProxyIPv4Address.byteCount + 4
        case 0x21, 0x22: 2 * ProxyIPv6Address.byteCount + 4
        case 0x31, 0x32: 2 * ProxyUnixAddress.byteCount
        default: nil
        }
    }
}

/// Source and destination of an IP connection. Ports are in host order here and
/// big-endian on the wire.
public struct ProxyEndpoints<Address: Hashable & Sendable>: Hashable, Sendable {
    public var source: Address
    public var sourcePort: UInt16
    public var destination: Address
    public var destinationPort: UInt16

    public init(source: Address, sourcePort: UInt16, destination: Address, destinationPort: UInt16) {
        self.source = source
        self.sourcePort = sourcePort
        self.destination = destination
        self.destinationPort = destinationPort
    }
}
