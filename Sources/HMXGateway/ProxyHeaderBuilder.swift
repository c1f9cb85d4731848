// SPDX-License-Identifier: Apache-2.0
import HMXCore
import HMXProxyProtocol
import NIOCore

/// The PROXY v2 header an export sends to its target before any data: the source is
/// the hypervisor-authenticated domain (synthetic address + domain TLVs).
enum ProxyHeaderBuilder {
    static func header(for domain: DomainID, name: String?, channel: any Channel, connection: UInt32) -> ByteBuffer {
        let header = ProxyHeader.hmx(
            domainID: domain.rawValue,
            domainName: name,
            connectionID: UInt64(connection),
            destination: channel.remoteAddress
        )
        var buffer = channel.allocator.buffer(capacity: header.encodedLength)
        // The header is built from bounded values (a name of at most 64 bytes), so it
        // always fits the format's 64 KiB limit.
        _ = try? header.encode(into: &buffer)
        return buffer
    }
}
