// SPDX-License-Identifier: Apache-2.0
import HMXCore
import NIOCore

/// Everything this gateway sends to one peer domain, as a plain value: a bounded queue
/// of frames packed into numbered Argo messages, several in flight at once.
///
/// A message that finds the peer's ring full (EAGAIN) is sent again after the
/// hypervisor's wake-up, so a later one may arrive first; the receiver puts them back
/// in order by number (``MessageOrder``).
///
/// The queue is bounded by flow control (DATA is queued only within the credit the
/// peer granted, and connections stop reading their sockets while the queue holds more
/// than ``queueLimit`` DATA bytes) and, against a peer that never drains its ring while
/// provoking answers, by ``maximumQueuedFrames``.
public struct PeerSender: Sendable {
    /// A message for sendv.
    public struct Message: Sendable {
        public var number: UInt32
        /// At most ``ArgoABI/maximumIOVs`` buffers.
        public var iovecs: [ByteBuffer]
        public var length: Int
        /// The result is not needed soon: a backend may report it late (and wake us
        /// less often).
        public var resultMayBeLate: Bool
        /// DGRAM frames in it (lost with it if sendv fails for good).
        public var datagrams = 0
    }

    /// What became of a message handed to sendv.
    public enum SendResult: Sendable {
        case delivered
        /// EAGAIN: the ring is full; the hypervisor wakes us when it has room.
        case ringFull
        case failed
    }

    /// A numbered message that has not been seen delivered yet.
    private struct Outstanding: Sendable {
        enum State { case inFlight, ringFull, delivered }
        var message: Message
        var state: State
    }

    /// A message that fits the smallest ring a gateway registers (4032 bytes, less the
    /// message header and one slot).
    public static let minimumMessageSize = 4000

    /// Frames that may wait for one peer. Flow control keeps a well-behaved peer far
    /// below this.
    public static let maximumQueuedFrames = 65536

    /// DATA and DGRAM payloads at least this large go to sendv as iovecs of their own
    /// (no copy); smaller frames are copied together into one iovec. Argo takes eight
    /// iovecs per message, so a payload of its own costs two (its header joins the
    /// copied part): copying a few KiB is cheaper than the message it would otherwise
    /// take (1,400-byte datagrams as iovecs of their own fit four to a message).
    static let separatePayloadSize = 8192

    /// Bytes the SEQUENCE frame at the start of every message takes.
    static let sequenceLength = StreamFrame.sequence(number: 0, base: 0, instance: 0).encodedLength

    /// Messages are packed up to a quarter of the peer's ring (at least one full DATA
    /// frame, at most four), even when the ring takes more, so that a sender can only
    /// be blocked when the ring is nearly full (see ``StreamRings``). The receiver
    /// computes the same bound from its own ring.
    public static func packingLimit(ringMaximumMessageSize maximum: Int) -> Int {
        let oneFrame = StreamFrame.maximumDataLength + 4096
        return min(maximum, 4 * oneFrame, max(oneFrame, maximum / 4))
    }

    /// This gateway's instance id (in every SEQUENCE frame).
    public let instance: UInt64
    /// `limits.peer_in_flight`, if set.
    public var configuredInFlight: Int?
    /// Largest message the peer's ring takes, learnt from notify; until then a size
    /// that fits the smallest ring a gateway registers.
    public private(set) var maximumMessageSize = PeerSender.minimumMessageSize
    /// ``maximumMessageSize`` was learnt from the peer's ring (not the default).
    public private(set) var isMessageSizeKnown = false
    private var queue = CircularBuffer<StreamFrame>(initialCapacity: 16)
    /// Sent messages, oldest first, from the oldest not seen delivered (the base).
    private var outstanding = CircularBuffer<Outstanding>(initialCapacity: Int(MessageOrder.window))
    /// The number of the next new message.
    private var nextNumber: UInt32 = 0
    /// A message found the ring full: nothing new is sent until the wake-up.
    public private(set) var isWaitingForRoom = false
    /// Bytes of the messages sent whose result has not come back yet.
    public private(set) var bytesInFlight = 0
    /// DATA bytes waiting in the queue (not yet in a message).
    public private(set) var queuedDataBytes = 0
    /// Connections that stopped reading for want of queue room.
    private var waitingForRoom: [StreamFrame.ConnectionKey] = []
    /// Datagrams that will never reach the peer: in a message whose sendv failed for
    /// good, queued when the peer was given up, or queued while the size of its ring
    /// was unknown and then larger than a message to it may be (counted, as every
    /// datagram drop is).
    public private(set) var datagramsLost = 0

    public init(instance: UInt64, configuredInFlight: Int? = nil) {
        self.instance = instance
        self.configuredInFlight = configuredInFlight
    }

    // MARK: - Sizes

    /// Largest message we send to this peer.
    public var messageLimit: Int { Self.packingLimit(ringMaximumMessageSize: self.maximumMessageSize) }

    /// Largest DATA body that fits one message to this peer (after the SEQUENCE frame).
    public var maximumDataLength: Int {
        max(1, min(StreamFrame.maximumDataLength, self.messageLimit - Self.sequenceLength - StreamFrame.headerSize))
    }

    /// The peer's ring takes messages of up to `size` bytes (notify told us), or is
    /// unknown again (`nil`: the peer restarted).
    public mutating func peerRingChanged(maximumMessageSize size: Int?) {
        if let size {
            self.maximumMessageSize = min(size, 1 << 20)
            self.isMessageSizeKnown = true
        } else {
            self.maximumMessageSize = Self.minimumMessageSize
            self.isMessageSizeKnown = false
        }
    }

    /// DATA bytes that may wait for this peer before its connections stop reading:
    /// enough for the next messages while the current ones are on their way. Credit
    /// alone does not bound the queue: a peer may grant up to 2^30 bytes per connection
    /// and then stop draining its ring.
    public var queueLimit: Int { max(4 * self.messageLimit, 1 << 20) }

    /// A connection may read its socket for this peer now.
    public var hasQueueRoom: Bool { self.queuedDataBytes < self.queueLimit }

    /// More frames wait than any well-behaved peer causes: it does not drain its ring.
    public var isOverflowing: Bool { self.queue.count > Self.maximumQueuedFrames }

    /// Frames wait to be sent.
    public var hasQueuedFrames: Bool { !self.queue.isEmpty }

    /// Frames waiting to be sent.
    public var queuedFrames: Int { self.queue.count }

    /// Frames queued or messages not yet seen delivered.
    public var isIdle: Bool { self.queue.isEmpty && self.outstanding.isEmpty }

    // MARK: - Queueing

    /// Queues a frame. Answers that the peer provoked (PONG, RESET of an unknown
    /// connection) are dropped when the queue is over its bound: a peer that stops
    /// draining its ring cannot make them pile up.
    public mutating func enqueue(_ frame: StreamFrame) {
        if self.queue.count >= Self.maximumQueuedFrames {
            switch frame {
            case .pong, .reset(_, .unknownConnection), .datagramClose: return
            default: break
            }
        }
        if let payload = frame.dataPayload { self.queuedDataBytes += payload.readableBytes }
        self.queue.append(frame)
    }

    /// `key` stopped reading for want of queue room; it is woken by
    /// ``takeConnectionsToWake()`` once the queue is down to half the limit.
    public mutating func waitForQueueRoom(_ key: StreamFrame.ConnectionKey) {
        self.waitingForRoom.append(key)
    }

    /// Connections to wake now that the queue has room (none if it has not).
    public mutating func takeConnectionsToWake() -> [StreamFrame.ConnectionKey] {
        guard !self.waitingForRoom.isEmpty, self.queuedDataBytes <= self.queueLimit / 2 else { return [] }
        defer { self.waitingForRoom.removeAll() }
        return self.waitingForRoom
    }

    /// Drops everything queued and outstanding (the peer is gone). Numbering goes on:
    /// the next message's base tells the receiver that the dropped ones never come.
    /// - Returns: connections that waited for queue room.
    public mutating func discard() -> [StreamFrame.ConnectionKey] {
        for frame in self.queue {
            if case .datagram = frame { self.datagramsLost += 1 }
        }
        for message in self.outstanding where message.state != .delivered {
            self.datagramsLost += message.message.datagrams
        }
        self.queue.removeAll()
        self.queuedDataBytes = 0
        self.outstanding.removeAll()
        self.isWaitingForRoom = false
        self.bytesInFlight = 0
        defer { self.waitingForRoom.removeAll() }
        return self.waitingForRoom
    }

    // MARK: - Sending

    /// The oldest number not seen delivered.
    private var base: UInt32 { self.outstanding.first?.message.number ?? self.nextNumber }

    /// Bytes that may be on their way to the peer's ring at once: by default what its
    /// ring holds (unlimited while its size is unknown and messages are small). Sending
    /// more in one burst than the ring can take only earns ring-full failures.
    private var inFlightLimit: Int {
        if let configured = self.configuredInFlight { return configured }
        return self.isMessageSizeKnown ? self.maximumMessageSize : .max
    }

    /// A message of `length` bytes may be sent now (one message always may).
    private func mayStart(_ length: Int) -> Bool {
        self.bytesInFlight == 0 || self.bytesInFlight + length <= self.inFlightLimit
    }

    /// The next message to hand to sendv, if one may go now: one that found the ring
    /// full (oldest first), else a new one while the window of numbers and the
    /// in-flight bound allow. Ask again after each send: a backend whose result comes
    /// at once (Xen) may have found the ring full meanwhile.
    public mutating func nextMessage() -> Message? {
        guard !self.isWaitingForRoom else { return nil }
        if let position = self.outstanding.firstIndex(where: { $0.state == .ringFull }) {
            guard self.mayStart(self.outstanding[position].message.length) else { return nil }
            self.outstanding[position].state = .inFlight
            var retry = self.outstanding[position].message
            retry.resultMayBeLate = false
            self.bytesInFlight += retry.length
            return retry
        }
        guard self.takeOversizeDatagrams(),
            !self.queue.isEmpty, self.nextNumber &- self.base < MessageOrder.window, self.mayStart(self.messageLimit)
        else {
            return nil
        }
        let number = self.nextNumber
        let sequence = StreamFrame.sequence(number: number, base: self.base, instance: self.instance)
        self.nextNumber &+= 1
        let (iovecs, datagrams) = self.pack(sequence)
        let length = iovecs.reduce(0) { $0 + $1.readableBytes }
        // While the window and the peer's ring are less than half used, this message's
        // result is not needed soon.
        let isEarly =
            self.nextNumber &- self.base <= MessageOrder.window / 2
            && self.bytesInFlight + length <= self.inFlightLimit / 2
        let message = Message(
            number: number,
            iovecs: iovecs,
            length: length,
            resultMayBeLate: isEarly,
            datagrams: datagrams
        )
        self.outstanding.append(Outstanding(message: message, state: .inFlight))
        self.bytesInFlight += length
        return message
    }

    /// A datagram at the head of the queue that is larger than a message to this peer
    /// may be: while the size of the peer's ring is not known yet (the query is under
    /// way, at the start or after the peer restarted), it waits for it, and what is
    /// queued behind it too (a flow's datagrams stay in order); once the size is known,
    /// each that still does not fit is dropped and counted.
    /// - Returns: false while the head waits for the size.
    private mutating func takeOversizeDatagrams() -> Bool {
        while let head = self.queue.first, case .datagram(_, _, let payload) = head,
            Self.sequenceLength + head.encodedLength > self.messageLimit
        {
            guard self.isMessageSizeKnown else { return false }
            self.queue.removeFirst()
            self.queuedDataBytes -= payload.readableBytes
            self.datagramsLost += 1
        }
        return true
    }

    /// The result of sendv for message `number`.
    /// - Returns: false if the message is unknown (the queue was discarded since).
    @discardableResult
    public mutating func sendCompleted(number: UInt32, _ result: SendResult) -> Bool {
        guard let position = self.outstanding.firstIndex(where: { $0.message.number == number }),
            self.outstanding[position].state == .inFlight
        else { return false }
        self.bytesInFlight -= self.outstanding[position].message.length
        switch result {
        case .delivered:
            self.outstanding[position].state = .delivered
            while self.outstanding.first?.state == .delivered { self.outstanding.removeFirst() }
        case .ringFull:
            // Flow control: the hypervisor queued a wake-up for us.
            self.outstanding[position].state = .ringFull
            self.isWaitingForRoom = true
        case .failed:
            // The owner gives the peer up, which discards (and counts) what it carried.
            break
        }
        return true
    }

    /// The hypervisor signalled an event: a full ring may have room again.
    /// - Returns: true if messages wait to be sent again.
    public mutating func ringMayHaveRoom() -> Bool {
        guard self.isWaitingForRoom else { return false }
        self.isWaitingForRoom = false
        return true
    }

    /// Takes frames off the queue into one message that starts with `sequence`: a
    /// gather list of at most ``ArgoABI/maximumIOVs`` buffers and at most
    /// ``messageLimit`` bytes. Control frames and DATA headers are packed into shared
    /// small buffers; large DATA payloads are referenced, not copied (the hypervisor
    /// copies them once, into the peer's ring).
    private mutating func pack(_ sequence: StreamFrame) -> (iovecs: [ByteBuffer], datagrams: Int) {
        let limit = self.messageLimit
        var iovecs: [ByteBuffer] = []
        var small = ByteBufferAllocator().buffer(capacity: 256)
        sequence.encode(into: &small)
        var total = sequence.encodedLength
        var datagrams = 0
        while let frame = self.queue.first {
            let length = frame.encodedLength
            if total + length > limit, total > sequence.encodedLength { break }
            if let payload = frame.dataPayload, payload.readableBytes >= Self.separatePayloadSize {
                // The header joins the small buffer, which is then closed, and the
                // payload follows as its own iovec.
                guard iovecs.count + 2 <= ArgoABI.maximumIOVs else { break }
                if small.capacity == 0 { small = ByteBufferAllocator().buffer(capacity: 256) }
                frame.encodeHeader(into: &small)
                iovecs.append(small)
                iovecs.append(payload)
                small = ByteBuffer()
            } else {
                if small.readableBytes == 0 {
                    guard iovecs.count + 1 <= ArgoABI.maximumIOVs else { break }
                    if small.capacity == 0 {
                        small = ByteBufferAllocator().buffer(capacity: min(limit, max(256, length)))
                    }
                }
                frame.encode(into: &small)
            }
            total += length
            if let payload = frame.dataPayload { self.queuedDataBytes -= payload.readableBytes }
            if case .datagram = frame { datagrams += 1 }
            self.queue.removeFirst()
        }
        if small.readableBytes > 0 { iovecs.append(small) }
        return (iovecs, datagrams)
    }
}
