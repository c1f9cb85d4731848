// SPDX-License-Identifier: Apache-2.0
import HMXCore
import HMXStream
import CoreMetrics
import Logging
import NIOCore

/// Everything this gateway sends to one peer domain: a bounded queue of frames packed
/// into numbered Argo messages, several in flight at once. A message that finds the
/// peer's ring full is sent again after the hypervisor's wake-up, so a later one may
/// arrive first; the receiver puts them back in order by number (``MessageOrder``).
///
/// The queue is bounded by flow control: DATA frames are queued only within the
/// credit the peer granted, and each connection has a bounded number of control
/// frames in its lifetime (CREDIT frames are at most one per quarter window consumed).
final class PeerLink {
    let domain: DomainID
    let link: any HMXLink
    let gatewayPort: HMXPort
    private unowned let core: GatewayCore
    private var queue = CircularBuffer<StreamFrame>(initialCapacity: 16)
    /// A numbered message that has not been seen delivered yet.
    private struct Outstanding {
        enum State { case inFlight, ringFull, delivered }
        var number: UInt32
        var iovecs: [ByteBuffer]
        var length: Int
        var state: State
    }
    /// Sent messages, oldest first, from the oldest not seen delivered (the base).
    private var outstanding = CircularBuffer<Outstanding>(initialCapacity: Int(MessageOrder.window))
    /// The number of the next new message.
    private var nextNumber: UInt32 = 0
    /// A message found the ring full: nothing new is sent until the wake-up.
    private var isWaitingForRoom = false
    /// Bytes of the messages sent whose result has not come back yet.
    private var bytesInFlight = 0
    /// `limits.peer_in_flight`, if set.
    var configuredInFlight: Int?
    private var isPumpScheduled = false
    /// Largest message the peer's ring takes, learnt from notify; until then a size
    /// that fits the smallest ring a gateway registers.
    var maximumMessageSize: Int = PeerLink.minimumMessageSize
    /// `maximumMessageSize` was learnt from the peer's ring (not the default).
    var isMessageSizeKnown = false
    /// A notify asking for the peer's ring size is under way.
    var isQueryingMessageSize = false
    /// When the peer's ring size was last asked for.
    var lastMessageSizeQuery: NIODeadline = .distantPast
    /// Puts the peer's messages back in the order it sent them; knows the instance id
    /// of the peer's current run.
    var order = MessageOrder()
    var lastHeard: NIODeadline = .now()
    /// Our ring for this peer is registered.
    var hasRing = false
    /// When we last checked that our ring for this peer still exists.
    var lastRingCheck: NIODeadline = .distantPast
    /// Connections with this peer.
    var connectionCount = 0

    init(domain: DomainID, link: any HMXLink, gatewayPort: HMXPort, core: GatewayCore) {
        self.domain = domain
        self.link = link
        self.gatewayPort = gatewayPort
        self.core = core
    }

    var destination: HMXAddress { HMXAddress(domain: self.domain, port: self.gatewayPort) }

    /// A message that fits the smallest ring a gateway registers (4032 bytes, less the
    /// message header and one slot).
    static let minimumMessageSize = 4000

    /// Messages are packed up to a quarter of the peer's ring (at least one full DATA
    /// frame, at most four), even when the ring takes more, so that a sender can only
    /// be blocked when the ring is nearly full (see ``GatewayCore/onEvent()``). The
    /// receiver computes the same bound from its own ring.
    static func packingLimit(ringMaximumMessageSize maximum: Int) -> Int {
        let oneFrame = StreamFrame.maximumDataLength + 4096
        return min(maximum, 4 * oneFrame, max(oneFrame, maximum / 4))
    }

    /// Largest message we send to this peer.
    var messageLimit: Int { Self.packingLimit(ringMaximumMessageSize: self.maximumMessageSize) }

    /// Bytes the SEQUENCE frame at the start of every message takes.
    static let sequenceLength = StreamFrame.sequence(number: 0, base: 0, instance: 0).encodedLength

    /// Largest DATA body that fits one message to this peer (after the SEQUENCE frame).
    var maximumDataLength: Int {
        max(1, min(StreamFrame.maximumDataLength, self.messageLimit - Self.sequenceLength - StreamFrame.headerSize))
    }

    /// Frames that may wait for one peer. Flow control keeps a well-behaved peer far
    /// below this; a peer that stops draining its ring while provoking answers (PINGs,
    /// frames for unknown connections) would otherwise make the queue grow without end.
    static let maximumQueuedFrames = 65536

    /// DATA bytes waiting in the queue (not yet in a message).
    private(set) var queuedDataBytes = 0
    /// Connections that stopped reading their socket because the queue was full.
    private var waitingForQueueRoom: [StreamConnection] = []

    /// DATA bytes that may wait for this peer before its connections stop reading:
    /// enough for the next messages while the current ones are on their way. Credit
    /// alone does not bound the queue: a peer may grant up to 2^30 bytes per connection
    /// and then stop draining its ring.
    var queueLimit: Int { max(4 * self.messageLimit, 1 << 20) }

    /// A connection may read its socket for this peer now.
    var hasQueueRoom: Bool { self.queuedDataBytes < self.queueLimit }

    /// `connection` stopped reading for want of queue room; it is asked to read again
    /// once the queue is down to half the limit.
    func waitForQueueRoom(_ connection: StreamConnection) {
        self.waitingForQueueRoom.append(connection)
    }

    private func wakeConnectionsIfQueueDrained() {
        guard !self.waitingForQueueRoom.isEmpty, self.queuedDataBytes <= self.queueLimit / 2 else { return }
        let waiting = self.waitingForQueueRoom
        self.waitingForQueueRoom.removeAll()
        for connection in waiting { connection.queueHasRoom() }
    }

    func enqueue(_ frame: StreamFrame) {
        if self.queue.count >= Self.maximumQueuedFrames {
            switch frame {
            case .pong, .reset(_, .unknownConnection):
                // Answers the peer provoked; dropping them is harmless.
                return
            default:
                self.core.peerFailed(
                    self.domain,
                    error: HMXError(code: .resourceExhausted, message: "the peer does not drain its ring; \(self.queue.count) frames waiting")
                )
                return
            }
        }
        if let payload = frame.dataPayload { self.queuedDataBytes += payload.readableBytes }
        self.queue.append(frame)
        self.schedulePump()
    }

    /// Sends queued frames at the end of this loop tick (so a burst becomes one message).
    func schedulePump() {
        guard !self.isPumpScheduled else { return }
        self.isPumpScheduled = true
        self.link.eventLoop.assumeIsolated().execute {
            self.isPumpScheduled = false
            self.pump()
        }
    }

    /// The hypervisor signalled an event: a full ring may have room again.
    func retryIfWaiting() {
        guard self.isWaitingForRoom else { return }
        self.isWaitingForRoom = false
        self.pump()
    }

    /// Drops everything queued and outstanding (the peer is gone). Numbering goes on:
    /// the next message's base tells the receiver that the dropped ones never come.
    func discardQueue() {
        self.queue.removeAll()
        self.queuedDataBytes = 0
        self.outstanding.removeAll()
        self.isWaitingForRoom = false
        self.bytesInFlight = 0
        // Connections that outlive this (none, when the peer failed) read again.
        self.wakeConnectionsIfQueueDrained()
    }

    /// DATA payloads at least this large go to sendv as iovecs of their own (no copy);
    /// smaller frames are copied together into one iovec.
    static let separatePayloadSize = 1024

    /// Takes frames off the queue into one message that starts with `sequence`: a
    /// gather list of at most ``ArgoABI/maximumIOVs`` buffers and at most
    /// ``messageLimit`` bytes. Control frames and DATA headers are packed into shared
    /// small buffers; large DATA payloads are referenced, not copied (the hypervisor
    /// copies them once, into the peer's ring).
    private func nextMessage(_ sequence: StreamFrame) -> [ByteBuffer] {
        let limit = self.messageLimit
        var iovecs: [ByteBuffer] = []
        var small = ByteBufferAllocator().buffer(capacity: 256)
        sequence.encode(into: &small)
        var total = sequence.encodedLength
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
                    if small.capacity == 0 { small = ByteBufferAllocator().buffer(capacity: min(limit, max(256, length))) }
                }
                frame.encode(into: &small)
            }
            total += length
            if let payload = frame.dataPayload { self.queuedDataBytes -= payload.readableBytes }
            self.queue.removeFirst()
        }
        if small.readableBytes > 0 { iovecs.append(small) }
        return iovecs
    }

    /// The oldest number not seen delivered.
    private var base: UInt32 { self.outstanding.first?.number ?? self.nextNumber }

    /// Set while `pump` runs: a send that completes at once (a synchronous backend)
    /// calls `pump` again, and the running loop picks up from there instead.
    private var isPumping = false

    /// Bytes that may be on their way to the peer's ring at once: by default what its
    /// ring holds (unlimited while its size is unknown and messages are small). Sending
    /// more in one burst than the ring can take only earns ring-full failures and
    /// retries (`limits.peer_in_flight` overrides it).
    private var inFlightLimit: Int {
        if let configured = self.configuredInFlight { return configured }
        return self.isMessageSizeKnown ? self.maximumMessageSize : .max
    }

    /// A message of `length` bytes may be sent now without passing ``inFlightLimit``
    /// (one message always may).
    private func mayStart(_ length: Int) -> Bool {
        self.bytesInFlight == 0 || self.bytesInFlight + length <= self.inFlightLimit
    }

    /// Sends again what found the ring full (in order), then new messages while the
    /// receiver's window allows.
    private func pump() {
        guard !self.isPumping else { return }
        self.isPumping = true
        defer { self.isPumping = false }
        // Oldest first; a retry that finds the ring full again stops the loop.
        while !self.isWaitingForRoom, let index = self.outstanding.firstIndex(where: { $0.state == .ringFull }) {
            guard self.mayStart(self.outstanding[index].length) else { return }
            self.outstanding[index].state = .inFlight
            self.send(self.outstanding[index], resultMayBeLate: false)
        }
        // A new message may be as large as the packing limit.
        while !self.isWaitingForRoom, !self.queue.isEmpty, self.nextNumber &- self.base < MessageOrder.window,
            self.mayStart(self.messageLimit)
        {
            let number = self.nextNumber
            let sequence = StreamFrame.sequence(number: number, base: self.base, instance: self.core.instance)
            self.nextNumber &+= 1
            let iovecs = self.nextMessage(sequence)
            let message = Outstanding(number: number, iovecs: iovecs, length: iovecs.reduce(0) { $0 + $1.readableBytes }, state: .inFlight)
            self.outstanding.append(message)
            // While the window and the peer's ring are less than half used, this
            // message's result is not needed soon: the backend may report it late and
            // save us a wake-up.
            let isEarly =
                self.nextNumber &- self.base <= MessageOrder.window / 2
                && self.bytesInFlight + message.length <= self.inFlightLimit / 2
            self.send(message, resultMayBeLate: isEarly)
        }
        self.wakeConnectionsIfQueueDrained()
    }

    private func send(_ message: Outstanding, resultMayBeLate: Bool) {
        self.bytesInFlight += message.length
        self.link.sendv(
            from: self.gatewayPort,
            to: self.destination,
            type: StreamFrame.messageType,
            iovecs: message.iovecs,
            resultMayBeLate: resultMayBeLate
        )
        .assumeIsolated().whenComplete { result in
            // Gone if the peer failed meanwhile (the queue was discarded).
            guard let index = self.outstanding.firstIndex(where: { $0.number == message.number }) else { return }
            self.bytesInFlight -= message.length
            switch result {
            case .success:
                self.outstanding[index].state = .delivered
                while self.outstanding.first?.state == .delivered { self.outstanding.removeFirst() }
                self.core.metrics.messagesSent.increment()
                self.pump()
            case .failure(let error as HMXError) where error.errno == .EAGAIN:
                // Flow control: the hypervisor queued a wake-up; the event handler retries.
                self.outstanding[index].state = .ringFull
                self.isWaitingForRoom = true
                self.core.metrics.ringFull.increment()
            case .failure(let error):
                self.discardQueue()
                self.core.peerFailed(self.domain, error: error)
            }
        }
    }
}

@available(*, unavailable)
extension PeerLink: Sendable {}
