// SPDX-License-Identifier: Apache-2.0
import HMXCore
import NIOCore

/// Identifies a connection: the peer domain (as the hypervisor stamps it) and the
/// connection's key within that peer.
public struct ConnectionID: Hashable, Sendable, CustomStringConvertible {
    public var peer: DomainID
    public var key: StreamFrame.ConnectionKey

    public init(peer: DomainID, key: StreamFrame.ConnectionKey) {
        self.peer = peer
        self.key = key
    }

    public var description: String { "\(self.peer)/\(self.key)" }

    /// One word to the hasher (a connection is looked up several times per frame).
    public func hash(into hasher: inout Hasher) {
        hasher.combine(
            UInt64(self.peer.rawValue) << 33 | UInt64(self.key.openedLocally ? 1 : 0) << 32 | UInt64(self.key.id)
        )
    }
}

/// What the owner of a ``StreamMultiplexer`` must do, in order.
public enum StreamAction: Sendable, Equatable {
    // MARK: Local sockets
    /// Write to the connection's socket; report the completion with
    /// ``StreamMultiplexer/localWriteCompleted(_:count:now:)``.
    case write(ConnectionID, ByteBuffer)
    /// Read the connection's socket once more.
    case read(ConnectionID)
    /// Shut the socket's output after its pending writes.
    case shutdownOutput(ConnectionID)
    /// Close the socket with a reset.
    case abort(ConnectionID)

    // MARK: Connections
    /// The peer asks to open a connection to the export at `servicePort`: admit it
    /// (dial, then ``StreamMultiplexer/dialSucceeded(_:)``) or refuse it
    /// (``StreamMultiplexer/refuse(_:_:)``).
    /// `records`: the opener's socket is a SEQPACKET one (only such an export fits).
    case incomingOpen(ConnectionID, servicePort: UInt32, records: Bool = false, caller: ByteBuffer? = nil)
    /// The peer's OPEN was refused before any connection existed.
    case openRefused(ConnectionID, StreamFrame.RefuseReason)
    case opened(ConnectionID)
    /// Ended abnormally (reported once per connection).
    case ended(ConnectionID, ConnectionEnd)
    /// Gone from the table: socket events for it must no longer reach the multiplexer.
    case removed(ConnectionID)

    // MARK: Datagram flows (the owner keeps them)
    /// A datagram of a flow from the peer (`servicePort` when the peer opened the flow,
    /// 0 in replies to ours).
    case datagram(ConnectionID, servicePort: UInt32, ByteBuffer)
    /// The peer ended (nil) or refused the flow.
    case datagramClosed(ConnectionID, StreamFrame.RefuseReason?)

    // MARK: The hypervisor
    case registerRing(DomainID, attempt: Int, check: Bool)
    case registerRingLater(DomainID, attempt: Int, delay: TimeAmount)
    case queryMessageSize(DomainID)
    /// The peer's domain is gone, and with it our partner ring for it: forget it.
    case ringLost(DomainID)

    // MARK: For the log
    case notice(StreamNotice)
}

/// Events worth a log line. Built only when they happen; none is per byte.
public enum StreamNotice: Sendable, Equatable {
    case ringRegistered(DomainID)
    /// Our ring for the peer was gone (its domain was destroyed); it is back.
    case ringRestored(DomainID)
    case ringRegistrationFailed(DomainID, errno: ArgoErrno?)
    /// The hypervisor refused the wildcard ring (EPERM on Xen without mac-permissive).
    case wildcardRingFailed(errno: ArgoErrno?, error: String)
    /// A ring (partner `DomainID`, or any) was inconsistent and has been flushed.
    case ringCorrupt(DomainID, error: String)
    /// Sending to the peer failed for good (or it stopped answering): its connections end.
    case peerFailed(DomainID, ConnectionOutcome, cause: PeerFailure, connections: Int)
    /// A message with a new instance id: the peer's gateway restarted.
    case peerRestarted(DomainID, connections: Int)
    /// A malformed message: the peer's connections end.
    case malformed(DomainID, MalformedMessage)
    /// The peer opened a connection whose id is live: that connection is reset.
    case reusedConnectionID(ConnectionID)
}

/// Why a peer was given up.
public enum PeerFailure: Sendable, Equatable, CustomStringConvertible {
    case send(ArgoErrno?)
    case keepaliveTimeout
    case notDraining(queuedFrames: Int)

    public var description: String {
        switch self {
        case .send(let errno?): "sendv failed: \(errno.name)"
        case .send(nil): "sendv failed"
        case .keepaliveTimeout: "no answer to keepalive pings"
        case .notDraining(let frames): "the peer does not drain its ring; \(frames) frames waiting"
        }
    }
}

/// Why a message from a peer was malformed.
public enum MalformedMessage: Sendable, Equatable, CustomStringConvertible {
    case notStreamType(UInt32)
    case noSequenceFirst
    case sequenceInside
    case frame(StreamFrame.ParseError)
    case order(MessageOrder.Violation)

    public var description: String {
        switch self {
        case .notStreamType(let type): "message type \(type) is not a stream message"
        case .noSequenceFirst: "the message does not start with SEQUENCE"
        case .sequenceInside: "SEQUENCE after the start of a message"
        case .frame(let error): "malformed frame: \(error)"
        case .order(let violation): "message order: \(violation)"
        }
    }
}
