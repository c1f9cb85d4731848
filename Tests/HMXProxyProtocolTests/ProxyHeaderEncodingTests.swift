import NIOCore
import Testing

// SPDX-License-Identifier: Apache-2.0
@testable import HMXProxyProtocol

@Suite("PROXY v2 encoding, byte for byte")
struct ProxyHeaderEncodingTests {
    @Test("the HMX header for domain 2 'beta', connection 0x10007, towards 127.0.0.1:6379")
    func hmxIPv4() throws {
        let destination = try SocketAddress(ipAddress: "127.0.0.1", port: 6379)
        let header = ProxyHeader.hmx(domainID: 2, domainName: "beta", connectionID: 0x1_0007, destination: destination)
        let expected = hex(
            """
            \(signatureHex) 21 11 0018
            64400002 7F000001 0007 18EB
            E0 0002 0002
            E1 0004 62657461
            """
        )
        #expect(try header.encoded().allBytes == expected)
        #expect(header.encodedLength == 40)
    }

    @Test("an IPv6 target gets the IPv4-mapped synthetic source")
    func hmxIPv6() throws {
        let destination = try SocketAddress(ipAddress: "::1", port: 443)
        let header = ProxyHeader.hmx(domainID: 300, destination: destination)
        let expected = hex(
            """
            \(signatureHex) 21 21 0029
            00000000 00000000 0000FFFF 6440012C
            00000000 00000000 00000000 00000001
            0000 01BB
            E0 0002 012C
            """
        )
        #expect(try header.encoded().allBytes == expected)
        #expect(header.sourceDescription == "[::ffff:6440:12c]:0")
    }

    @Test("a Unix or vsock target (no IP destination) gets 0.0.0.0:0 as destination")
    func hmxWithoutIPDestination() throws {
        let destination = try SocketAddress(unixDomainSocketPath: "/run/app.sock")
        for target in [destination, nil] {
            let header = ProxyHeader.hmx(domainID: 0x7FEF, domainName: "é", connectionID: nil, destination: target)
            let expected = hex(
                """
                \(signatureHex) 21 11 0016
                64407FEF 00000000 0000 0000
                E0 0002 7FEF
                E1 0002 C3A9
                """
            )
            #expect(try header.encoded().allBytes == expected)
        }
    }

    @Test("LOCAL without addresses is the 16-byte minimum")
    func local() throws {
        #expect(try ProxyHeader.local().encoded().allBytes == hex("\(signatureHex) 20 00 0000"))
    }

    @Test("UNSPEC with TLVs, and the Unix families")
    func unspecAndUnix() throws {
        let unspec = ProxyHeader(command: .proxy, addresses: .unspecified, tlvs: [.noop(count: 2)])
        #expect(try unspec.encoded().allBytes == hex("\(signatureHex) 21 00 0005 04 0002 0000"))

        let source = try #require(ProxyUnixAddress(path: "/a"))
        let destination = try #require(ProxyUnixAddress(path: "/b"))
        let unix = ProxyHeader(addresses: .unixStream(source: source, destination: destination))
        let bytes = try unix.encoded().allBytes
        #expect(bytes.count == 16 + 216)
        #expect(Array(bytes[12..<16]) == [0x21, 0x31, 0x00, 0xD8])
        #expect(Array(bytes[16..<18]) == Array("/a".utf8) && bytes[18..<124].allSatisfy { $0 == 0 })
        #expect(Array(bytes[124..<126]) == Array("/b".utf8) && bytes[126...].allSatisfy { $0 == 0 })
        #expect(ProxyUnixAddress(path: String(repeating: "x", count: 109)) == nil)
        #expect(source.path == "/a")
    }

    @Test("UDP families use their own transport nibble")
    func udp() throws {
        let v4 = ProxyEndpoints(
            source: ProxyIPv4Address(10, 0, 0, 1),
            sourcePort: 53,
            destination: ProxyIPv4Address(10, 0, 0, 2),
            destinationPort: 5353
        )
        #expect(
            try ProxyHeader(addresses: .udp4(v4)).encoded().allBytes
                == hex("\(signatureHex) 21 12 000C 0A000001 0A000002 0035 14E9")
        )
        let v6 = ProxyEndpoints(
            source: ProxyIPv6Address.loopback,
            sourcePort: 1,
            destination: ProxyIPv6Address.loopback,
            destinationPort: 2
        )
        let bytes = try ProxyHeader(addresses: .udp6(v6)).encoded().allBytes
        #expect(Array(bytes[12..<16]) == [0x21, 0x22, 0x00, 0x24] && bytes.count == 52)
    }

    @Test("a CRC32c TLV is filled with the checksum of the whole header (checked independently)")
    func checksum() throws {
        let header = ProxyHeader(
            addresses: .tcp4(
                ProxyEndpoints(
                    source: ProxyIPv4Address(192, 0, 2, 1),
                    sourcePort: 56324,
                    destination: ProxyIPv4Address(198, 51, 100, 7),
                    destinationPort: 80
                )
            ),
            tlvs: [.authority("example.org"), .crc32c, .uniqueID([1, 2, 3, 4])]
        )
        // Expected bytes computed with a bit-at-a-time CRC-32C outside this code base.
        let expected = hex(
            """
            \(signatureHex) 21 11 0028
            C0000201 C6336407 DC04 0050
            02 000B 6578616D706C652E6F7267
            03 0004 1924B8C5
            05 0004 01020304
            """
        )
        #expect(try header.encoded().allBytes == expected)
        #expect(CRC32C.checksum(Array("123456789".utf8)) == 0xE306_9283)
    }

    @Test("appends after existing bytes and reports what it wrote")
    func appends() throws {
        var buffer = ByteBuffer(bytes: [0xAA, 0xBB])
        buffer.moveReaderIndex(forwardBy: 1)
        let header = ProxyHeader.local(tlvs: [.crc32c])
        let written = try header.encode(into: &buffer)
        #expect(written == 23)
        #expect(buffer.readableBytes == 24)
        #expect(buffer.readableBytesView.first == 0xBB)
        buffer.moveReaderIndex(forwardBy: 1)
        let checksum = Array(buffer.allBytes.suffix(4))
        let zeroed = Array(buffer.allBytes.dropLast(4)) + [0, 0, 0, 0]
        #expect(checksum == withUnsafeBytes(of: CRC32C.checksum(zeroed).bigEndian) { Array($0) })
        let parsed = try ProxyHeader.parse(from: &buffer)
        #expect(parsed == ProxyHeader.local(tlvs: [ProxyTLV(type: .crc32c, value: checksum)]))
        #expect(buffer.readableBytes == 0)
    }

    @Test("values that do not fit are an error, never truncated")
    func tooLong() throws {
        let fits = ProxyHeader.local(tlvs: [ProxyTLV(type: .noop, value: [UInt8](repeating: 0, count: 65532))])
        #expect(try fits.encoded().readableBytes == ProxyHeader.maximumEncodedLength)
        let tooLong = ProxyHeader.local(tlvs: [ProxyTLV(type: .noop, value: [UInt8](repeating: 0, count: 65533))])
        var buffer = ByteBuffer()
        #expect(throws: ProxyProtocolError.headerTooLong(length: 65552, limit: 65551)) {
            try tooLong.encode(into: &buffer)
        }
        #expect(buffer.readableBytes == 0)
        #expect(throws: ProxyProtocolError.invalidChecksumTLV) {
            try ProxyHeader.local(tlvs: [.crc32c, .crc32c]).encoded()
        }
        #expect(throws: ProxyProtocolError.invalidChecksumTLV) {
            try ProxyHeader.local(tlvs: [ProxyTLV(type: .crc32c, value: [1])]).encoded()
        }
    }

    @Test("synthetic source addresses are 100.64.(id>>8).(id&255)")
    func synthetic() {
        #expect(ProxyIPv4Address.hmxSynthetic(domainID: 0).description == "100.64.0.0")
        #expect(ProxyIPv4Address.hmxSynthetic(domainID: 2).description == "100.64.0.2")
        #expect(ProxyIPv4Address.hmxSynthetic(domainID: 256).description == "100.64.1.0")
        #expect(ProxyIPv4Address.hmxSynthetic(domainID: 0x7FEF).description == "100.64.127.239")
        #expect(ProxyHeader.hmx(domainID: 5, connectionID: 0xFFFF_FFFF).sourceDescription == "100.64.0.5:65535")
    }

    @Test("IPv6 text follows RFC 5952")
    func ipv6Text() throws {
        func text(_ hexText: String) throws -> String {
            try #require(ProxyIPv6Address(bytes: hex(hexText))).description
        }
        #expect(try text("00000000000000000000000000000001") == "::1")
        #expect(try text("20010DB8000000000000000000000001") == "2001:db8::1")
        #expect(try text("20010DB8000000010000000000000000") == "2001:db8:0:1::")
        #expect(try text("20010DB8000100000001000000000001") == "2001:db8:1:0:1::1")
        #expect(try text("20010DB8AAAABBBBCCCCDDDDEEEEFFFF") == "2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff")
        #expect(try text("00000000000000000000000000000000") == "::")
        #expect(ProxyIPv6Address(bytes: [1, 2, 3]) == nil)
    }

    @Test("PP2_TYPE_SSL: the layout written for a TLS caller, and a verified client CN read back only when verified")
    func sslCommonName() throws {
        let tlv = ProxyTLV.ssl(clientCertificate: true, version: "TLSv1.3", commonName: "netvm-a.example")
        #expect(
            tlv.value == [0x07, 0, 0, 0, 0, 0x21, 0, 7] + Array("TLSv1.3".utf8) + [0x22, 0, 15]
                + Array("netvm-a.example".utf8)
        )
        func header(_ value: [UInt8]) -> ProxyHeader {
            ProxyHeader.hmx(domainID: 1, extraTLVs: [ProxyTLV(type: .ssl, value: value)])
        }
        #expect(header(tlv.value).verifiedClientCommonName == "netvm-a.example")
        // Not verified (verify != 0), no certificate on this connection, a truncated sub-TLV.
        var unverified = tlv.value
        unverified[4] = 1
        #expect(header(unverified).verifiedClientCommonName == nil)
        #expect(header([0x01, 0, 0, 0, 0, 0x22, 0, 1, 0x41]).verifiedClientCommonName == nil)
        #expect(header([0x07, 0, 0, 0, 0, 0x22, 0, 9, 0x41]).verifiedClientCommonName == nil)
        #expect(ProxyTLV.ssl(clientCertificate: false, version: nil, commonName: nil).value == [0x01, 0, 0, 0, 0])
    }
}
