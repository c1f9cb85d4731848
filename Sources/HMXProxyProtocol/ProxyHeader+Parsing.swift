// SPDX-License-Identifier: Apache-2.0
public import NIOCore

extension ProxyHeader {
    /// A limit that fits every header a proxy sends in practice (haproxy's own buffer
    /// for TLVs is smaller) while bounding what a hostile sender can make us hold.
    public static let defaultMaximumLength = 4096

    /// Parses one header at the reader index of `buffer`.
    ///
    /// The parser is bounded: it decides from the first 16 bytes whether the header can
    /// be accepted at all, never holds more than `maximumLength` bytes for one header,
    /// and rejects a wrong signature as soon as the bytes seen so far differ from it.
    ///
    /// - Returns: the header, with the reader index moved past it; or `nil`, consuming
    ///   nothing, when the buffer does not yet hold the whole header.
    /// - Throws: a ``ProxyProtocolError`` when the bytes cannot become a valid header;
    ///   the reader index is unchanged.
    public static func parse(
        from buffer: inout ByteBuffer,
        maximumLength: Int = ProxyHeader.defaultMaximumLength
    ) throws(ProxyProtocolError) -> ProxyHeader? {
        let limit = min(max(maximumLength, Self.fixedLength), Self.maximumEncodedLength)
        let result: Result<(ProxyHeader, Int)?, ProxyProtocolError> = buffer.withUnsafeReadableBytes { bytes in
            Result { () throws(ProxyProtocolError) in try Self.parse(bytes, limit: limit) }
        }
        guard let (header, length) = try result.get() else { return nil }
        buffer.moveReaderIndex(forwardBy: length)
        return header
    }

    /// Parses from raw bytes: the header and its length, or `nil` if incomplete.
    static func parse(_ bytes: UnsafeRawBufferPointer, limit: Int) throws(ProxyProtocolError) -> (ProxyHeader, Int)? {
        let available = bytes.count
        for index in 0..<min(available, Self.signature.count) where bytes[index] != Self.signature[index] {
            throw .invalidSignature
        }
        guard available >= Self.fixedLength else { return nil }

        let versionAndCommand = bytes[12]
        guard versionAndCommand >> 4 == 2 else { throw .unsupportedVersion(versionAndCommand >> 4) }
        guard let command = ProxyCommand(rawValue: versionAndCommand & 0x0F) else {
            throw .invalidCommand(versionAndCommand & 0x0F)
        }
        let family = bytes[13]
        guard let addressLength = ProxyAddresses.addressBlockLength(familyAndTransport: family) else {
            throw .invalidFamily(family)
        }
        let payloadLength = Int(bytes[14]) << 8 | Int(bytes[15])
        let total = Self.fixedLength + payloadLength
        guard total <= limit else { throw .headerTooLong(length: total, limit: limit) }
        guard payloadLength >= addressLength else {
            throw .truncatedAddressBlock(length: payloadLength, required: addressLength)
        }
        guard available >= total else { return nil }

        var reader = Reader(bytes: bytes, offset: Self.fixedLength)
        let addresses = Self.readAddresses(family: family, from: &reader)

        var tlvs: [ProxyTLV] = []
        var checksumOffset: Int?
        while reader.offset < total {
            let start = reader.offset
            guard total - start >= 3 else { throw .truncatedTLV(offset: start) }
            let type = ProxyTLV.Kind(rawValue: reader.byte())
            let length = Int(reader.uint16())
            guard total - reader.offset >= length else { throw .truncatedTLV(offset: start) }
            if type == .crc32c {
                guard length == 4, checksumOffset == nil else { throw .invalidChecksumTLV }
                checksumOffset = reader.offset
            }
            tlvs.append(ProxyTLV(type: type, value: reader.bytes(length)))
        }

        if let checksumOffset {
            let found =
                UInt32(bytes[checksumOffset]) << 24 | UInt32(bytes[checksumOffset + 1]) << 16
                | UInt32(bytes[checksumOffset + 2]) << 8 | UInt32(bytes[checksumOffset + 3])
            var zeroed = Array(bytes[..<total])
            zeroed.replaceSubrange(checksumOffset..<(checksumOffset + 4), with: repeatElement(0, count: 4))
            let expected = CRC32C.checksum(zeroed)
            guard expected == found else { throw .checksumMismatch(expected: expected, found: found) }
        }
        return (ProxyHeader(command: command, addresses: addresses, tlvs: tlvs), total)
    }

    /// Reads the address block; the caller has checked that it is there.
    private static func readAddresses(family: UInt8, from reader: inout Reader) -> ProxyAddresses {
        switch family {
        case 0x11, 0x12:
            let source = ProxyIPv4Address(value: reader.uint32())
            let destination = ProxyIPv4Address(value: reader.uint32())
            let endpoints = ProxyEndpoints(
                source: source,
                sourcePort: reader.uint16(),
                destination: destination,
                destinationPort: reader.uint16()
            )
            return family == 0x11 ? .tcp4(endpoints) : .udp4(endpoints)
        case 0x21, 0x22:
            let source = ProxyIPv6Address(high: reader.uint64(), low: reader.uint64())
            let destination = ProxyIPv6Address(high: reader.uint64(), low: reader.uint64())
            let endpoints = ProxyEndpoints(
                source: source,
                sourcePort: reader.uint16(),
                destination: destination,
                destinationPort: reader.uint16()
            )
            return family == 0x21 ? .tcp6(endpoints) : .udp6(endpoints)
        case 0x31, 0x32:
            // Both counts are exactly ProxyUnixAddress.byteCount, so the initialisers succeed.
            let source = ProxyUnixAddress(rawValue: reader.bytes(ProxyUnixAddress.byteCount))!
            let destination = ProxyUnixAddress(rawValue: reader.bytes(ProxyUnixAddress.byteCount))!
            return family == 0x31
                ? .unixStream(source: source, destination: destination)
                : .unixDatagram(source: source, destination: destination)
        default:
            return .unspecified
        }
    }
}

/// Big-endian reads at an offset the caller has bounds-checked.
private struct Reader {
    let bytes: UnsafeRawBufferPointer
    var offset: Int

    mutating func byte() -> UInt8 {
        defer { self.offset += 1 }
        return self.bytes[self.offset]
    }

    mutating func uint16() -> UInt16 { UInt16(self.byte()) << 8 | UInt16(self.byte()) }
    mutating func uint32() -> UInt32 { UInt32(self.uint16()) << 16 | UInt32(self.uint16()) }
    mutating func uint64() -> UInt64 { UInt64(self.uint32()) << 32 | UInt64(self.uint32()) }

    mutating func bytes(_ count: Int) -> [UInt8] {
        defer { self.offset += count }
        return Array(self.bytes[self.offset..<(self.offset + count)])
    }
}
