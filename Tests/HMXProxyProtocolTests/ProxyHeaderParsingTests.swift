import NIOCore
import Testing

// SPDX-License-Identifier: Apache-2.0
@testable import HMXProxyProtocol

@Suite("PROXY v2 parsing: bounded, incremental, strict")
struct ProxyHeaderParsingTests {
    static let samples: [ProxyHeader] = [
        .local(),
        .hmx(
            domainID: 2,
            domainName: "beta",
            connectionID: 7,
            destination: try? SocketAddress(ipAddress: "127.0.0.1", port: 6379)
        ),
        .hmx(
            domainID: 300,
            destination: try? SocketAddress(ipAddress: "::1", port: 443),
            extraTLVs: [.crc32c, .uniqueID([9])]
        ),
        ProxyHeader(
            addresses: .unixDatagram(source: ProxyUnixAddress(path: "/x")!, destination: ProxyUnixAddress(path: "")!)
        ),
        ProxyHeader(command: .local, addresses: .unspecified, tlvs: [.authority("a"), .noop(count: 0)]),
    ]

    @Test("every encoded header parses back to itself and consumes exactly its bytes", arguments: samples)
    func roundTrip(header: ProxyHeader) throws {
        var buffer = try header.encoded()
        let length = buffer.readableBytes
        buffer.writeString("GET / HTTP/1.1\r\n")
        var parsed = try #require(try ProxyHeader.parse(from: &buffer))
        #expect(buffer.readableBytes == 16, "application bytes stay in the buffer")
        if let index = header.tlvs.firstIndex(where: { $0.type == .crc32c }) {
            #expect(parsed.tlvs[index].value != [0, 0, 0, 0])
            parsed.tlvs[index].value = [0, 0, 0, 0]
        }
        #expect(parsed == header)
        #expect(try parsed.encoded().readableBytes == length)
    }

    @Test("byte by byte: nil until complete, nothing consumed meanwhile")
    func incremental() throws {
        let header = ProxyHeader.hmx(domainID: 9, domainName: "gamma", connectionID: 1)
        let bytes = try header.encoded().allBytes
        var buffer = ByteBuffer()
        for (index, byte) in bytes.enumerated() {
            buffer.writeInteger(byte)
            let result = try ProxyHeader.parse(from: &buffer)
            if index < bytes.count - 1 {
                #expect(result == nil)
                #expect(buffer.readableBytes == index + 1)
            } else {
                #expect(result == header)
                #expect(buffer.readableBytes == 0)
            }
        }
    }

    @Test("a wrong signature is rejected at its first differing byte; v1 text too")
    func signature() throws {
        var v1 = ByteBuffer(string: "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n")
        #expect(throws: ProxyProtocolError.invalidSignature) { try ProxyHeader.parse(from: &v1) }
        #expect(v1.readableBytes == 32)
        var partial = ByteBuffer(bytes: [0x0D, 0x0A, 0x0D])
        #expect(try ProxyHeader.parse(from: &partial) == nil)
        partial.writeInteger(UInt8(0x0A))
        #expect(try ProxyHeader.parse(from: &partial) == nil)
        partial.writeInteger(UInt8(0x01))
        #expect(throws: ProxyProtocolError.invalidSignature) { try ProxyHeader.parse(from: &partial) }
        var empty = ByteBuffer()
        #expect(try ProxyHeader.parse(from: &empty) == nil)
    }

    @Test("version, command and family bytes outside the specification are rejected")
    func invalidFixedPart() throws {
        func parse(_ text: String) throws -> ProxyHeader? {
            var buffer = ByteBuffer(bytes: hex("\(signatureHex) \(text)"))
            return try ProxyHeader.parse(from: &buffer)
        }
        #expect(throws: ProxyProtocolError.unsupportedVersion(1)) { try parse("11 11 000C") }
        #expect(throws: ProxyProtocolError.unsupportedVersion(3)) { try parse("31 11 000C") }
        #expect(throws: ProxyProtocolError.invalidCommand(2)) { try parse("22 11 000C") }
        for family: UInt8 in [0x01, 0x10, 0x13, 0x23, 0x30, 0x33, 0x41, 0xFF] {
            #expect(throws: ProxyProtocolError.invalidFamily(family)) {
                try parse("21 \(String(family, radix: 16).leftPadded(to: 2)) 000C")
            }
        }
        #expect(throws: ProxyProtocolError.truncatedAddressBlock(length: 11, required: 12)) { try parse("21 11 000B") }
        #expect(throws: ProxyProtocolError.truncatedAddressBlock(length: 35, required: 36)) { try parse("21 21 0023") }
        #expect(throws: ProxyProtocolError.truncatedAddressBlock(length: 0, required: 216)) { try parse("21 31 0000") }
    }

    @Test("the length limit is enforced from the first 16 bytes, before waiting for the rest")
    func limit() throws {
        var buffer = ByteBuffer(bytes: hex("\(signatureHex) 21 11 0FF1"))
        #expect(throws: ProxyProtocolError.headerTooLong(length: 4097, limit: 4096)) {
            try ProxyHeader.parse(from: &buffer)
        }
        #expect(try ProxyHeader.parse(from: &buffer, maximumLength: 4097) == nil)
        #expect(throws: ProxyProtocolError.headerTooLong(length: 4097, limit: 16)) {
            try ProxyHeader.parse(from: &buffer, maximumLength: 0)
        }
        var huge = ByteBuffer(bytes: hex("\(signatureHex) 21 11 FFFF"))
        #expect(try ProxyHeader.parse(from: &huge, maximumLength: .max) == nil)
    }

    @Test("TLVs must end exactly at the header's end")
    func truncatedTLVs() throws {
        func parse(_ tlvHex: String, length: Int) throws -> ProxyHeader? {
            let lengthHex = String(length, radix: 16).leftPadded(to: 4)
            var buffer = ByteBuffer(bytes: hex("\(signatureHex) 20 00 \(lengthHex) \(tlvHex)"))
            return try ProxyHeader.parse(from: &buffer)
        }
        #expect(throws: ProxyProtocolError.truncatedTLV(offset: 16)) { try parse("E0 00", length: 2) }
        #expect(throws: ProxyProtocolError.truncatedTLV(offset: 16)) { try parse("E0 0003 0001", length: 5) }
        #expect(throws: ProxyProtocolError.truncatedTLV(offset: 21)) { try parse("E0 0002 0001 E1", length: 6) }
        #expect(try parse("E0 0002 0001", length: 5)?.hmxDomainID == 1)
        #expect(try parse("E0 0001 01", length: 4)?.hmxDomainID == nil, "a malformed domain id is not reported")
        #expect(try parse("E1 0001 FF", length: 4)?.hmxDomainName == nil, "invalid UTF-8 is not reported")
        #expect(try parse("E1 0004 62657461", length: 7)?.hmxDomainName == "beta")
    }

    @Test("a CRC32c TLV is checked")
    func checksum() throws {
        var bytes = try ProxyHeader.hmx(domainID: 1, extraTLVs: [.crc32c]).encoded().allBytes
        var good = ByteBuffer(bytes: bytes)
        #expect(try ProxyHeader.parse(from: &good)?.hmxDomainID == 1)
        bytes[20] ^= 0x01  // one bit of the destination address
        var bad = ByteBuffer(bytes: bytes)
        #expect {
            try ProxyHeader.parse(from: &bad)
        } throws: { error in
            guard case ProxyProtocolError.checksumMismatch = error else { return false }
            return true
        }
        var twice = ByteBuffer(bytes: hex("\(signatureHex) 20 00 000E 03 0004 00000000 03 0004 00000000"))
        #expect(throws: ProxyProtocolError.invalidChecksumTLV) { try ProxyHeader.parse(from: &twice) }
        var short = ByteBuffer(bytes: hex("\(signatureHex) 20 00 0005 03 0002 0000"))
        #expect(throws: ProxyProtocolError.invalidChecksumTLV) { try ProxyHeader.parse(from: &short) }
    }

    @Test("errors describe themselves")
    func descriptions() {
        #expect(ProxyProtocolError.invalidFamily(0x13).description == "invalid PROXY v2 family/transport byte 0x13")
        #expect(
            ProxyProtocolError.headerTooLong(length: 5000, limit: 4096).description
                == "PROXY v2 header of 5000 bytes exceeds the limit of 4096"
        )
    }
}

extension String {
    fileprivate func leftPadded(to width: Int) -> String {
        String(repeating: "0", count: max(0, width - self.count)) + self
    }
}
