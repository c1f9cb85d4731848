// SPDX-License-Identifier: Apache-2.0
public import NIOCore

extension ProxyTLV.Kind {
    /// The authenticated source domain id, 2 bytes big-endian. It comes from the
    /// hypervisor's message header, so a target may authorise on it.
    public static let hmxDomainID = ProxyTLV.Kind(rawValue: 0xE0)
    /// The source domain's name as the gateway's configuration calls it, UTF-8.
    /// Informational: authorise on ``hmxDomainID``.
    public static let hmxDomainName = ProxyTLV.Kind(rawValue: 0xE1)
    /// The domain a caller from another host is, as the relay that vouched for it
    /// asserts (its own PROXY header's domain), UTF-8. Asserted, not stamped: believe
    /// it as far as you trust ``hmxAssertedBy``.
    public static let hmxAssertedDomain = ProxyTLV.Kind(rawValue: 0xE2)
    /// Who vouched for a caller from another host: the name in its verified client
    /// certificate, or its address, UTF-8.
    public static let hmxAssertedBy = ProxyTLV.Kind(rawValue: 0xE3)
}

extension ProxyTLV {
    /// `PP2_TYPE_SSL`: the client connected with TLS (client byte: `PP2_CLIENT_SSL`,
    /// with a certificate also `PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS`; verify 0:
    /// verified), with the sub-TLVs `PP2_SUBTYPE_SSL_VERSION` (0x21) and
    /// `PP2_SUBTYPE_SSL_CN` (0x22) when known.
    public static func ssl(clientCertificate: Bool, version: String?, commonName: String?) -> ProxyTLV {
        var value: [UInt8] = [clientCertificate ? 0x07 : 0x01, 0, 0, 0, 0]
        for (type, text) in [(UInt8(0x21), version), (UInt8(0x22), commonName)] {
            guard let text else { continue }
            let bytes = Array(text.utf8.prefix(255))
            value += [type, 0, UInt8(bytes.count)] + bytes
        }
        return ProxyTLV(type: .ssl, value: value)
    }

    public static func hmxAssertedDomain(_ name: String) -> ProxyTLV {
        ProxyTLV(type: .hmxAssertedDomain, value: Array(name.utf8))
    }

    public static func hmxAssertedBy(_ name: String) -> ProxyTLV {
        ProxyTLV(type: .hmxAssertedBy, value: Array(name.utf8))
    }
}

extension ProxyTLV {
    public static func hmxDomainID(_ id: UInt16) -> ProxyTLV {
        ProxyTLV(type: .hmxDomainID, value: [UInt8(truncatingIfNeeded: id >> 8), UInt8(truncatingIfNeeded: id)])
    }

    public static func hmxDomainName(_ name: String) -> ProxyTLV {
        ProxyTLV(type: .hmxDomainName, value: Array(name.utf8))
    }
}

extension ProxyIPv4Address {
    /// The synthetic source address of a domain: `100.64.(id >> 8).(id & 255)`.
    ///
    /// It lies in 100.64.0.0/10 (RFC 6598 shared address space), which is never the
    /// loopback or LAN address of the target's own host, it is stable for a domain id,
    /// and it distinguishes domains in servers that only log or filter by address.
    /// Every Xen domain id (below 0x7FF0) maps into 100.64.0.0 – 100.64.127.255.
    public static func hmxSynthetic(domainID: UInt16) -> ProxyIPv4Address {
        ProxyIPv4Address(100, 64, UInt8(truncatingIfNeeded: domainID >> 8), UInt8(truncatingIfNeeded: domainID))
    }
}

extension ProxyHeader {
    /// The header a gateway sends to an export's target for a connection from a domain.
    ///
    /// - Source: ``ProxyIPv4Address/hmxSynthetic(domainID:)``, port = the low 16 bits of
    ///   the connection id (0 without one), because Argo does not authenticate ports.
    /// - Destination: the target's address when it is IPv4 or IPv6 (an IPv6 target gets
    ///   the IPv4-mapped form of the synthetic source, since both ends must share a
    ///   family); `0.0.0.0:0` for Unix and vsock targets, which have no IP address.
    /// - TLVs: ``ProxyTLV/Kind/hmxDomainID``, then ``ProxyTLV/Kind/hmxDomainName`` if a
    ///   name is given, then `extraTLVs`.
    public static func hmx(
        domainID: UInt16,
        domainName: String? = nil,
        connectionID: UInt64? = nil,
        destination: SocketAddress? = nil,
        extraTLVs: [ProxyTLV] = []
    ) -> ProxyHeader {
        let source = ProxyIPv4Address.hmxSynthetic(domainID: domainID)
        let sourcePort = UInt16(truncatingIfNeeded: connectionID ?? 0)
        var tlvs = [ProxyTLV.hmxDomainID(domainID)]
        if let domainName { tlvs.append(.hmxDomainName(domainName)) }
        tlvs += extraTLVs

        let addresses: ProxyAddresses
        switch destination.flatMap(IPDestination.init) {
        case .v4(let address, let port):
            addresses = .tcp4(
                ProxyEndpoints(source: source, sourcePort: sourcePort, destination: address, destinationPort: port)
            )
        case .v6(let address, let port):
            addresses = .tcp6(
                ProxyEndpoints(
                    source: ProxyIPv6Address(ipv4Mapped: source),
                    sourcePort: sourcePort,
                    destination: address,
                    destinationPort: port
                )
            )
        case nil:
            addresses = .tcp4(
                ProxyEndpoints(
                    source: source,
                    sourcePort: sourcePort,
                    destination: ProxyIPv4Address(value: 0),
                    destinationPort: 0
                )
            )
        }
        return ProxyHeader(command: .proxy, addresses: addresses, tlvs: tlvs)
    }

    /// The authenticated source domain id, if the header carries a well-formed one.
    public var hmxDomainID: UInt16? {
        guard let value = self.firstTLV(.hmxDomainID)?.value, value.count == 2 else { return nil }
        return UInt16(value[0]) << 8 | UInt16(value[1])
    }

    /// The client certificate's common name from `PP2_TYPE_SSL`, if the sender says
    /// the client presented a certificate on this connection (`PP2_CLIENT_CERT_CONN`)
    /// and it verified it (`verify` 0), as HAProxy's `send-proxy-v2-ssl-cn` does.
    public var verifiedClientCommonName: String? {
        guard let value = self.firstTLV(.ssl)?.value, value.count >= 5 else { return nil }
        let clientCertificateOnConnection: UInt8 = 0x02
        guard value[0] & clientCertificateOnConnection != 0, value[1...4].allSatisfy({ $0 == 0 }) else { return nil }
        var offset = 5
        while value.count - offset >= 3 {
            let type = value[offset]
            let length = Int(value[offset + 1]) << 8 | Int(value[offset + 2])
            guard value.count - offset - 3 >= length else { return nil }
            if type == 0x22 {
                return String(validating: value[(offset + 3)..<(offset + 3 + length)], as: UTF8.self)
            }
            offset += 3 + length
        }
        return nil
    }

    /// The source domain's name, if the header carries one in valid UTF-8.
    public var hmxDomainName: String? {
        guard let value = self.firstTLV(.hmxDomainName)?.value else { return nil }
        return String(validating: value, as: UTF8.self)
    }

    /// The source endpoint for IP families, as the receiver would report it.
    public var sourceDescription: String? {
        switch self.addresses {
        case .tcp4(let endpoints), .udp4(let endpoints): "\(endpoints.source):\(endpoints.sourcePort)"
        case .tcp6(let endpoints), .udp6(let endpoints): "[\(endpoints.source)]:\(endpoints.sourcePort)"
        case .unixStream(let source, _), .unixDatagram(let source, _): source.path
        case .unspecified: nil
        }
    }
}

/// An IP address and port taken from a `SocketAddress`'s `sockaddr_in`/`sockaddr_in6`.
/// The port is at offset 2 and the address at offset 4 (IPv4) or 8 (IPv6), both in
/// network order, on Linux and on the BSDs alike.
private enum IPDestination {
    case v4(ProxyIPv4Address, UInt16)
    case v6(ProxyIPv6Address, UInt16)

    init?(_ address: SocketAddress) {
        switch address {
        case .v4:
            let (value, port) = address.withSockAddr { pointer, _ in
                let raw = UnsafeRawPointer(pointer)
                return (Self.bigEndian(raw, at: 4, count: 4), Self.bigEndian(raw, at: 2, count: 2))
            }
            self = .v4(ProxyIPv4Address(value: UInt32(value)), UInt16(port))
        case .v6:
            let (high, low, port) = address.withSockAddr { pointer, _ in
                let raw = UnsafeRawPointer(pointer)
                return (
                    Self.bigEndian(raw, at: 8, count: 8), Self.bigEndian(raw, at: 16, count: 8),
                    Self.bigEndian(raw, at: 2, count: 2)
                )
            }
            self = .v6(ProxyIPv6Address(high: high, low: low), UInt16(port))
        case .unixDomainSocket:
            return nil
        }
    }

    private static func bigEndian(_ raw: UnsafeRawPointer, at offset: Int, count: Int) -> UInt64 {
        (0..<count).reduce(UInt64(0)) { $0 << 8 | UInt64(raw.load(fromByteOffset: offset + $1, as: UInt8.self)) }
    }
}
