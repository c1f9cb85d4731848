// SPDX-License-Identifier: Apache-2.0
import HMXCore
import HMXProxyProtocol
import NIOCore

/// The PROXY v2 header an export sends to its target before any data: the source is
/// the hypervisor-authenticated domain (synthetic address + domain TLVs); for a
/// caller from another host that a relay vouched for, what the relay said too,
/// marked as asserted (``ProxyTLV/Kind/hmxAssertedDomain``,
/// ``ProxyTLV/Kind/hmxAssertedBy``, and, when the caller came over TLS,
/// `PP2_TYPE_SSL` with the client certificate's common name).
enum ProxyHeaderBuilder {
    static func header(
        for domain: DomainID,
        name: String?,
        channel: any Channel,
        connection: UInt32,
        caller: CallerIdentity? = nil
    ) -> ByteBuffer {
        var extra: [ProxyTLV] = []
        if let caller {
            // Only for a caller that came over TLS.
            if caller.tlsVersion != nil || caller.certificateName != nil {
                extra.append(
                    .ssl(
                        clientCertificate: caller.certificateName != nil,
                        version: caller.tlsVersion,
                        commonName: caller.certificateName
                    )
                )
            }
            if let domain = caller.domain { extra.append(.hmxAssertedDomain(domain)) }
            extra.append(.hmxAssertedBy(caller.assertedBy))
        }
        let header = ProxyHeader.hmx(
            domainID: domain.rawValue,
            domainName: name,
            connectionID: UInt64(connection),
            destination: channel.remoteAddress,
            extraTLVs: extra
        )
        var buffer = channel.allocator.buffer(capacity: header.encodedLength)
        // The header is built from bounded values (names of at most 64 bytes, a
        // caller's fields of at most 255 each), so it always fits the format's 64 KiB.
        _ = try? header.encode(into: &buffer)
        return buffer
    }
}
