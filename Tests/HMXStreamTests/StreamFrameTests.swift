// SPDX-License-Identifier: Apache-2.0
import HMXStream
import NIOCore
import Testing

@Suite("HMX stream frames")
struct StreamFrameTests {
    /// Frames as the peer receives them: the opener flag is turned around.
    func roundTrip(_ frames: [StreamFrame]) throws -> [StreamFrame] {
        var buffer = ByteBuffer()
        for frame in frames { frame.encode(into: &buffer) }
        #expect(buffer.readableBytes == frames.reduce(0) { $0 + $1.encodedLength })
        var parsed: [StreamFrame] = []
        while let frame = try StreamFrame.parse(&buffer) { parsed.append(frame) }
        return parsed
    }

    @Test func everyFrameRoundTrips() throws {
        let mine = StreamFrame.ConnectionKey(id: 7, openedLocally: true)
        let theirs = StreamFrame.ConnectionKey(id: 7, openedLocally: false)
        let frames: [StreamFrame] = [
            .open(id: 7, servicePort: 6379, initialCredit: 262_144, instance: 0xDEAD_BEEF),
            .accept(key: mine, initialCredit: 1000, instance: 42),
            .refuse(key: mine, reason: .deniedByGateway),
            .data(key: mine, payload: ByteBuffer(string: "hello")),
            .credit(key: mine, increment: 65536),
            .fin(key: mine),
            .reset(key: mine, reason: .flowControlViolation),
            .ping(instance: 1, nonce: 2),
            .pong(instance: 3, nonce: 4),
            .sequence(number: 0xFFFF_FFFF, base: 0xFFFF_FFFA, instance: 9),
        ]
        let parsed = try self.roundTrip(frames)
        #expect(parsed.count == frames.count)
        #expect(parsed[0] == .open(id: 7, servicePort: 6379, initialCredit: 262_144, instance: 0xDEAD_BEEF))
        // What I send about my connection arrives as the peer's view: not opened there.
        #expect(parsed[1] == .accept(key: theirs, initialCredit: 1000, instance: 42))
        #expect(parsed[2] == .refuse(key: theirs, reason: .deniedByGateway))
        #expect(parsed[3] == .data(key: theirs, payload: ByteBuffer(string: "hello")))
        #expect(parsed[4] == .credit(key: theirs, increment: 65536))
        #expect(parsed[5] == .fin(key: theirs))
        #expect(parsed[6] == .reset(key: theirs, reason: .flowControlViolation))
        #expect(parsed[7] == .ping(instance: 1, nonce: 2))
        #expect(parsed[8] == .pong(instance: 3, nonce: 4))
        #expect(parsed[9] == .sequence(number: 0xFFFF_FFFF, base: 0xFFFF_FFFA, instance: 9))
    }

    @Test("DGRAM and DGRAM_CLOSE: layout, empty and largest bodies, hostile variants")
    func datagramFrames() throws {
        let mine = StreamFrame.ConnectionKey(id: 9, openedLocally: true)
        let theirs = StreamFrame.ConnectionKey(id: 9, openedLocally: false)
        var buffer = ByteBuffer()
        StreamFrame.datagram(key: mine, servicePort: 53, payload: ByteBuffer(string: "q")).encode(into: &buffer)
        #expect(
            Array(buffer.readableBytesView) == [11, 1, 0, 0, 9, 0, 0, 0, 1, 0, 0, 0, 53, 0, 0, 0, UInt8(ascii: "q")]
        )
        let largest = ByteBuffer(repeating: 7, count: StreamFrame.maximumDatagramLength)
        let frames: [StreamFrame] = [
            .datagram(key: mine, servicePort: 53, payload: ByteBuffer(string: "query")),
            .datagram(key: theirs, servicePort: 0, payload: ByteBuffer()),
            .datagram(key: mine, servicePort: 7, payload: largest),
            .datagramClose(key: mine, reason: nil),
            .datagramClose(key: theirs, reason: .deniedByGateway),
        ]
        let parsed = try self.roundTrip(frames)
        #expect(
            parsed == [
                .datagram(key: theirs, servicePort: 53, payload: ByteBuffer(string: "query")),
                .datagram(key: mine, servicePort: 0, payload: ByteBuffer()),
                .datagram(key: theirs, servicePort: 7, payload: largest),
                .datagramClose(key: theirs, reason: nil),
                .datagramClose(key: mine, reason: .deniedByGateway),
            ]
        )
        // A reply (not from the flow's opener) names no service port.
        var reply = ByteBuffer()
        StreamFrame.datagram(key: theirs, servicePort: 0, payload: ByteBuffer(string: "a")).encode(into: &reply)
        var replyBytes = Array(reply.readableBytesView)
        replyBytes[12] = 53
        #expect(self.parseError(replyBytes) == .nonZeroReserved)
        // Larger than any datagram a flow carries.
        var big = ByteBuffer()
        StreamFrame.datagram(key: mine, servicePort: 1, payload: ByteBuffer(repeating: 0, count: 65537)).encode(
            into: &big
        )
        #expect(self.parseError(Array(big.readableBytesView)) == .badBodyLength(type: 11, length: 65537))
        // A close with a body, or an unknown reason.
        var close = ByteBuffer()
        StreamFrame.datagramClose(key: mine, reason: .limitReached).encode(into: &close)
        var closeBytes = Array(close.readableBytesView)
        closeBytes[12] = 99
        #expect(self.parseError(closeBytes) == .unknownReason(99))
        closeBytes = Array(close.readableBytesView)
        closeBytes[8] = 1
        #expect(self.parseError(closeBytes + [0]) == .badBodyLength(type: 12, length: 1))
    }

    @Test("OPEN's flags: bit 0 says the opener's socket carries records (SEQPACKET); other bits are refused")
    func openRecords() throws {
        var buffer = ByteBuffer()
        StreamFrame.open(id: 3, servicePort: 60, initialCredit: 4096, instance: 5, records: true).encode(into: &buffer)
        #expect(Array(buffer.readableBytesView)[16...19] == [2, 0, 1, 0])  // version 2, flags 1
        #expect(
            try self.roundTrip([.open(id: 3, servicePort: 60, initialCredit: 4096, instance: 5, records: true)])
                == [.open(id: 3, servicePort: 60, initialCredit: 4096, instance: 5, records: true)]
        )
        var bytes = Array(buffer.readableBytesView)
        bytes[18] = 4
        #expect(self.parseError(bytes) == .nonZeroReserved)
    }

    @Test("OPEN's flags: bit 1 says a caller block follows, up to 1024 bytes; the length must agree with the bit")
    func openCaller() throws {
        let caller = ByteBuffer(bytes: [0xE3, 0, 3] + Array("a.b".utf8))
        let open = StreamFrame.open(id: 3, servicePort: 60, initialCredit: 4096, instance: 5, caller: caller)
        var buffer = ByteBuffer()
        open.encode(into: &buffer)
        let bytes = Array(buffer.readableBytesView)
        #expect(bytes[8..<12] == [22, 0, 0, 0] && bytes[18...19] == [2, 0])  // 16 + 6 bytes, flags 2
        #expect(try self.roundTrip([open, .fin(key: .init(id: 3, openedLocally: true))]).first == open)
        // The bit without a block, a block without the bit.
        var noBlock = Array(bytes.prefix(32))
        noBlock[8] = 16
        #expect(self.parseError(noBlock) == .badBodyLength(type: 1, length: 16))
        var noBit = bytes
        noBit[18] = 0
        #expect(self.parseError(noBit) == .badBodyLength(type: 1, length: 22))
        // At most 1024 bytes of block.
        var long = ByteBuffer()
        let longBlock = ByteBuffer(bytes: [UInt8](repeating: 0, count: 1025))
        StreamFrame.open(id: 3, servicePort: 60, initialCredit: 1, instance: 5, caller: longBlock).encode(into: &long)
        #expect(self.parseError(Array(long.readableBytesView)) == .badBodyLength(type: 1, length: 16 + 1025))
    }

    @Test func sequenceLayout() {
        var buffer = ByteBuffer()
        StreamFrame.sequence(number: 0x0102_0304, base: 0x0A0B_0C0D, instance: 0x1122_3344_5566_7788).encode(
            into: &buffer
        )
        #expect(
            Array(buffer.readableBytesView) == [
                10, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0, 0, 4, 3, 2, 1,
                0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0x0D, 0x0C, 0x0B, 0x0A, 0, 0, 0, 0,
            ]
        )
        var bytes = Array(buffer.readableBytesView)
        bytes[28] = 1  // reserved
        #expect(self.parseError(bytes) == .nonZeroReserved)
        bytes = Array(buffer.readableBytesView)
        bytes[4] = 1  // a connection id
        #expect(self.parseError(bytes) == .nonZeroReserved)
        bytes = Array(buffer.readableBytesView)
        bytes[1] = 1  // the opener flag
        #expect(self.parseError(bytes) == .nonZeroReserved)
        bytes = Array(buffer.readableBytesView)
        bytes[8] = 8  // a short body
        #expect(self.parseError(Array(bytes.prefix(24))) == .badBodyLength(type: 10, length: 8))
    }

    @Test func headerLayoutIsLittleEndianAndDocumented() {
        var buffer = ByteBuffer()
        StreamFrame.credit(key: .init(id: 0x0102_0304, openedLocally: true), increment: 0x0A0B_0C0D).encode(
            into: &buffer
        )
        #expect(Array(buffer.readableBytesView) == [5, 1, 0, 0, 4, 3, 2, 1, 0, 0, 0, 0, 0x0D, 0x0C, 0x0B, 0x0A])
    }

    func parseError(_ bytes: [UInt8]) -> StreamFrame.ParseError? {
        var buffer = ByteBuffer(bytes: bytes)
        do {
            while try StreamFrame.parse(&buffer) != nil {}
            return nil
        } catch {
            return error
        }
    }

    @Test("hostile frames are rejected, never trusted")
    func hostileFrames() {
        var fin = ByteBuffer()
        StreamFrame.fin(key: .init(id: 1, openedLocally: true)).encode(into: &fin)
        let good = Array(fin.readableBytesView)
        #expect(self.parseError(Array(good.prefix(15))) == .truncatedHeader)
        var bytes = good
        bytes[0] = 99
        #expect(self.parseError(bytes) == .unknownType(99))
        bytes = good
        bytes[1] = 2
        #expect(self.parseError(bytes) == .unknownFlags(2))
        bytes = good
        bytes[2] = 1
        #expect(self.parseError(bytes) == .nonZeroReserved)
        bytes = good
        bytes[8] = 4  // a FIN with a body
        #expect(self.parseError(bytes + [0, 0, 0, 0]) == .badBodyLength(type: 6, length: 4))
        // DATA claiming more bytes than the message holds.
        var data = ByteBuffer()
        StreamFrame.data(key: .init(id: 1, openedLocally: true), payload: ByteBuffer(string: "abc")).encode(into: &data)
        var dataBytes = Array(data.readableBytesView)
        dataBytes[8] = 200
        #expect(self.parseError(dataBytes) == .truncatedBody)
        dataBytes[8] = 0
        #expect(self.parseError(Array(dataBytes.prefix(16))) == .zeroLengthData)
        // DATA above the maximum frame size.
        dataBytes[8] = 0x01
        dataBytes[10] = 0x01  // 65537 bytes
        #expect(
            self.parseError(dataBytes + [UInt8](repeating: 0, count: 65537)) == .badBodyLength(type: 4, length: 65537)
        )
        // A RESET with an unknown reason.
        var reset = ByteBuffer()
        StreamFrame.reset(key: .init(id: 1, openedLocally: true), reason: .idleTimeout).encode(into: &reset)
        var resetBytes = Array(reset.readableBytesView)
        resetBytes[12] = 200
        #expect(self.parseError(resetBytes) == .unknownReason(200))
        // An OPEN that does not claim to come from the opener.
        var open = ByteBuffer()
        StreamFrame.open(id: 1, servicePort: 1, initialCredit: 1, instance: 1).encode(into: &open)
        var openBytes = Array(open.readableBytesView)
        openBytes[1] = 0
        #expect(self.parseError(openBytes) == .unknownFlags(0))
    }
}
