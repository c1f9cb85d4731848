// SPDX-License-Identifier: Apache-2.0
import HMXCore
import HMXStream
import CoreMetrics
import Logging
import NIOCore

/// Everything this gateway sends to one peer domain: a bounded queue of frames packed
/// into Argo messages, with exactly one sendv in flight so that messages can never
/// overtake each other (a retried message stays first).
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
    /// A packed message that found the peer's ring full; sent again first.
    private var retryMessage: ByteBuffer?
    private var isSending = false
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
    /// The peer gateway's instance id, once heard.
    var remoteInstance: UInt64?
    var lastHeard: NIODeadline = .now()
    /// Our ring for this peer is registered.
    var hasRing = false
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

    /// Messages are packed up to this size even when the peer's ring takes more, so
    /// that a sender can only be blocked when the ring is nearly full (see
    /// ``GatewayCore/onEvent()``).
    static let packingLimit = StreamFrame.maximumDataLength + 4096

    /// Largest message we send to this peer.
    var messageLimit: Int { min(self.maximumMessageSize, Self.packingLimit) }

    /// Largest DATA body that fits one message to this peer.
    var maximumDataLength: Int {
        max(1, min(StreamFrame.maximumDataLength, self.messageLimit - StreamFrame.headerSize))
    }

    /// Frames that may wait for one peer. Flow control keeps a well-behaved peer far
    /// below this; a peer that stops draining its ring while provoking answers (PINGs,
    /// frames for unknown connections) would otherwise make the queue grow without end.
    static let maximumQueuedFrames = 65536

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
        if self.retryMessage != nil, !self.isSending { self.pump() }
    }

    /// Drops everything queued (the peer is gone).
    func discardQueue() {
        self.queue.removeAll()
        self.retryMessage = nil
    }

    private func pump() {
        guard !self.isSending else { return }
        let message: ByteBuffer
        if let retry = self.retryMessage {
            message = retry
        } else {
            guard !self.queue.isEmpty else { return }
            var packed = ByteBufferAllocator().buffer(capacity: min(self.messageLimit, 65536 + 64))
            while let frame = self.queue.first,
                packed.readableBytes == 0 || packed.readableBytes + frame.encodedLength <= self.messageLimit
            {
                frame.encode(into: &packed)
                self.queue.removeFirst()
            }
            message = packed
        }
        self.isSending = true
        self.link.send(from: self.gatewayPort, to: self.destination, type: StreamFrame.messageType, message)
            .assumeIsolated().whenComplete { result in
            self.isSending = false
            switch result {
            case .success:
                self.retryMessage = nil
                self.core.metrics.messagesSent.increment()
                self.pump()
            case .failure(let error as HMXError) where error.errno == .EAGAIN:
                // Flow control: Xen queued a wake-up; the event handler retries.
                self.retryMessage = message
                self.core.metrics.ringFull.increment()
            case .failure(let error):
                self.retryMessage = nil
                self.queue.removeAll()
                self.core.peerFailed(self.domain, error: error)
            }
        }
    }
}

@available(*, unavailable)
extension PeerLink: Sendable {}
