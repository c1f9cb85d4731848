// SPDX-License-Identifier: Apache-2.0
import HMXCore
import HMXStream
import NIOCore
import Testing

@Suite("Peer sender: packing, numbering, in-flight bounds, queue room")
struct PeerSenderTests {
    static let key = StreamFrame.ConnectionKey(id: 1, openedLocally: true)

    /// The key as the receiving peer reads it (the flag says who opened the connection).
    static let received = StreamFrame.ConnectionKey(id: 1, openedLocally: false)

    /// The frames of a message, SEQUENCE first, as the peer parses them.
    static func frames(of message: PeerSender.Message) throws -> [StreamFrame] {
        var buffer = ByteBuffer()
        for iovec in message.iovecs { buffer.writeImmutableBuffer(iovec) }
        var frames: [StreamFrame] = []
        while let frame = try StreamFrame.parse(&buffer) { frames.append(frame) }
        return frames
    }

    static func data(_ count: Int) -> StreamFrame {
        .data(key: Self.key, payload: ByteBuffer(repeating: 1, count: count))
    }

    @Test("a burst of frames becomes one numbered message that starts with SEQUENCE")
    func packing() throws {
        var sender = PeerSender(instance: 99)
        sender.peerRingChanged(maximumMessageSize: 1 << 20)
        sender.enqueue(.credit(key: Self.key, increment: 10))
        sender.enqueue(Self.data(2000))
        sender.enqueue(Self.data(20000))
        sender.enqueue(.fin(key: Self.key))
        let result1 = sender.nextMessage()
        let message = try #require(result1)
        #expect(message.number == 0)
        #expect(
            try Self.frames(of: message) == [
                .sequence(number: 0, base: 0, instance: 99), .credit(key: Self.received, increment: 10),
                .data(key: Self.received, payload: ByteBuffer(repeating: 1, count: 2000)),
                .data(key: Self.received, payload: ByteBuffer(repeating: 1, count: 20000)), .fin(key: Self.received),
            ]
        )
        // The small payload is copied with the frames around it; the large one is its
        // own iovec (not copied).
        #expect(message.iovecs.count == 3)
        let result2 = sender.nextMessage()
        #expect(result2 == nil)
    }

    @Test("messages stay within the peer's packing limit and eight iovecs")
    func limits() throws {
        var sender = PeerSender(instance: 1)
        sender.peerRingChanged(maximumMessageSize: 1 << 20)
        for _ in 0..<20 { sender.enqueue(Self.data(StreamFrame.maximumDataLength)) }
        var total = 0
        while let message = sender.nextMessage() {
            #expect(message.length <= sender.messageLimit)
            #expect(message.iovecs.count <= ArgoABI.maximumIOVs)
            total += try Self.frames(of: message).count - 1
            sender.sendCompleted(number: message.number, .delivered)
        }
        #expect(total == 20)
    }

    @Test("at most eight messages past the base; the base is the oldest not seen delivered")
    func window() throws {
        var sender = PeerSender(instance: 1)
        var numbers: [UInt32] = []
        for _ in 0..<10 {
            sender.enqueue(.credit(key: Self.key, increment: 1))
            if let message = sender.nextMessage() { numbers.append(message.number) }
        }
        #expect(numbers == Array(0..<8))
        let result3 = sender.sendCompleted(number: 3, .delivered)
        #expect(result3)
        sender.enqueue(.credit(key: Self.key, increment: 1))
        let result4 = sender.nextMessage()
        #expect(result4 == nil, "message 0 is still the base")
        sender.sendCompleted(number: 0, .delivered)
        let result5 = sender.nextMessage()
        let next = try #require(result5)
        #expect(next.number == 8)
        #expect(try Self.frames(of: next).first == .sequence(number: 8, base: 1, instance: 1))
    }

    @Test("a full ring holds everything until the wake-up, then the same message goes again first")
    func ringFull() {
        var sender = PeerSender(instance: 1)
        sender.enqueue(.fin(key: Self.key))
        let first = sender.nextMessage()!
        sender.enqueue(.credit(key: Self.key, increment: 1))
        let second = sender.nextMessage()!
        sender.sendCompleted(number: first.number, .ringFull)
        sender.enqueue(.credit(key: Self.key, increment: 2))
        let result6 = sender.nextMessage()
        #expect(result6 == nil)
        let result7 = sender.ringMayHaveRoom()
        #expect(result7)
        let retry = sender.nextMessage()!
        #expect(retry.number == first.number && !retry.resultMayBeLate)
        let result8 = sender.nextMessage()
        #expect(result8?.number == second.number + 1)
        let result9 = sender.sendCompleted(number: 77, .delivered)
        #expect(!result9, "unknown numbers are ignored")
    }

    @Test("with the ring's size known, at most a ring's worth is on the way")
    func inFlightBound() {
        var sender = PeerSender(instance: 1)
        sender.peerRingChanged(maximumMessageSize: 100_000)
        for _ in 0..<4 { sender.enqueue(Self.data(40_000)) }
        let first = sender.nextMessage()!
        #expect(first.length == 40_048)
        let result10 = sender.nextMessage()
        #expect(result10 == nil, "another full-size message would pass the ring's size")
        sender.sendCompleted(number: first.number, .delivered)
        let result11 = sender.nextMessage()
        #expect(result11 != nil)
    }

    @Test("queue room: reading stops past the limit and resumes at half of it")
    func queueRoom() {
        var sender = PeerSender(instance: 1)
        while sender.hasQueueRoom { sender.enqueue(Self.data(StreamFrame.maximumDataLength)) }
        sender.waitForQueueRoom(Self.key)
        let result12 = sender.takeConnectionsToWake()
        #expect(result12.isEmpty)
        var sent = 0
        while sender.queuedDataBytes > sender.queueLimit / 2, let message = sender.nextMessage() {
            sender.sendCompleted(number: message.number, .delivered)
            sent += 1
        }
        #expect(sent > 0)
        let result13 = sender.takeConnectionsToWake()
        #expect(result13 == [Self.key])
    }

    @Test("a peer that never drains: provoked answers are dropped past the bound, and the sender says it overflows")
    func overflow() {
        var sender = PeerSender(instance: 1)
        for nonce in 0..<UInt64(PeerSender.maximumQueuedFrames) { sender.enqueue(.pong(instance: 1, nonce: nonce)) }
        #expect(!sender.isOverflowing)
        sender.enqueue(.pong(instance: 1, nonce: 0))
        #expect(!sender.isOverflowing, "a PONG past the bound is dropped")
        sender.enqueue(.fin(key: Self.key))
        #expect(sender.isOverflowing)
    }

    @Test("discarding keeps the numbering: the next base tells the receiver what will never come")
    func discard() throws {
        var sender = PeerSender(instance: 1)
        sender.enqueue(.fin(key: Self.key))
        _ = sender.nextMessage()
        sender.waitForQueueRoom(Self.key)
        let result14 = sender.discard()
        #expect(result14 == [Self.key])
        sender.enqueue(.fin(key: Self.key))
        let result15 = sender.nextMessage()
        let next = try #require(result15)
        #expect(try Self.frames(of: next).first == .sequence(number: 1, base: 1, instance: 1))
    }
}

extension PeerSender.Message: Equatable {
    public static func == (lhs: Self, rhs: Self) -> Bool { lhs.number == rhs.number && lhs.iovecs == rhs.iovecs }
}
