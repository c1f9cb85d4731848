// SPDX-License-Identifier: Apache-2.0
public import NIOCore

extension ProxyHeader {
    /// The twelve bytes every v2 header starts with (`\r\n\r\n\0\r\nQUIT\n`).
    public static let signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]
    /// Signature, version and command, family and transport, length.
    public static let fixedLength = 16
    /// The longest header the format can express.
    public static let maximumEncodedLength = fixedLength + Int(UInt16.max)

    /// The value of the length field: address block plus TLVs.
    public var payloadLength: Int {
        self.tlvs.reduce(self.addresses.encodedLength) { $0 + $1.encodedLength }
    }

    /// Bytes the header takes on the wire.
    public var encodedLength: Int { Self.fixedLength + self.payloadLength }

    /// Appends the header to `buffer`; a CRC32c TLV, if present, is filled with the
    /// header's checksum. Nothing is written when it throws.
    ///
    /// - Throws: ``ProxyProtocolError/headerTooLong(length:limit:)`` if the TLVs do not
    ///   fit in the 16-bit length (values are never truncated);
    ///   ``ProxyProtocolError/invalidChecksumTLV`` for more than one CRC32c TLV or one
    ///   that is not 4 bytes long.
    /// - Returns: the number of bytes written.
    @discardableResult
    public func encode(into buffer: inout ByteBuffer) throws(ProxyProtocolError) -> Int {
        let payload = self.payloadLength
        guard payload <= Int(UInt16.max) else {
            throw .headerTooLong(length: Self.fixedLength + payload, limit: Self.maximumEncodedLength)
        }
        let checksums = self.tlvs.filter { $0.type == .crc32c }
        guard checksums.count <= 1, checksums.allSatisfy({ $0.value.count == 4 }) else {
            throw .invalidChecksumTLV
        }

        let start = buffer.writerIndex
        buffer.reserveCapacity(minimumWritableBytes: Self.fixedLength + payload)
        buffer.writeBytes(Self.signature)
        buffer.writeInteger(0x20 | self.command.rawValue)
        buffer.writeInteger(self.addresses.familyAndTransport)
        buffer.writeInteger(UInt16(payload))
        self.addresses.write(into: &buffer)
        var checksumIndex: Int?
        for tlv in self.tlvs {
            buffer.writeInteger(tlv.type.rawValue)
            buffer.writeInteger(UInt16(tlv.value.count))
            if tlv.type == .crc32c {
                checksumIndex = buffer.writerIndex
                buffer.writeInteger(UInt32(0))
            } else {
                buffer.writeBytes(tlv.value)
            }
        }
        if let checksumIndex {
            // The checksum covers the whole header with its own field zeroed.
            let crc = buffer.withUnsafeReadableBytes { bytes in
                CRC32C.checksum(bytes[(start - buffer.readerIndex)...])
            }
            buffer.setInteger(crc, at: checksumIndex)
        }
        return buffer.writerIndex - start
    }

    /// The header in a new buffer.
    public func encoded() throws(ProxyProtocolError) -> ByteBuffer {
        var buffer = ByteBuffer()
        try self.encode(into: &buffer)
        return buffer
    }
}

extension ProxyAddresses {
    func write(into buffer: inout ByteBuffer) {
        switch self {
        case .unspecified:
            break
        case .tcp4(let endpoints), .udp4(let endpoints):
            buffer.writeInteger(endpoints.source.value)
            buffer.writeInteger(endpoints.destination.value)
            buffer.writeInteger(endpoints.sourcePort)
            buffer.writeInteger(endpoints.destinationPort)
        case .tcp6(let endpoints), .udp6(let endpoints):
            buffer.writeInteger(endpoints.source.high)
            buffer.writeInteger(endpoints.source.low)
            buffer.writeInteger(endpoints.destination.high)
            buffer.writeInteger(endpoints.destination.low)
            buffer.writeInteger(endpoints.sourcePort)
            buffer.writeInteger(endpoints.destinationPort)
        case .unixStream(let source, let destination), .unixDatagram(let source, let destination):
            buffer.writeBytes(source.rawValue)
            buffer.writeBytes(destination.rawValue)
        }
    }
}
