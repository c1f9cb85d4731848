// SPDX-License-Identifier: Apache-2.0
import NIOCore

/// Everything about one HMX stream connection, as a plain value: events in, actions
/// out. The owner (``StreamMultiplexer``) executes every action it gets.
///
/// ```
///   opener:   opening ──ACCEPT──▶ open ──FIN both ways──▶ closed
///                 └──REFUSE/RESET/timeout────────────────────▶ closed
///   acceptor: dialing ──target up──▶ open ──...           (REFUSE if the dial fails)
/// ```
///
/// Backpressure, both ways:
/// - local → peer: the socket is read only while the peer has granted credit and the
///   peer's send queue has room (``Action/read``); a read can overshoot the credit by
///   at most one socket read, which is held here and sent as credit arrives.
/// - peer → local: DATA is written to the socket (``Action/write(_:)``); credit goes
///   back to the peer only when the socket has taken the bytes
///   (``localWriteCompleted(_:now:budget:into:)``). A slow reader stops only its writer.
///
/// A stream is exact: it delivers every byte in order or both ends see a reset. DATA
/// for a socket that is gone, and a socket that goes away with peer bytes still being
/// written, reset the connection.
public struct StreamConnectionState: Sendable {
    public enum Phase: Sendable, Equatable {
        /// We sent OPEN and wait for ACCEPT or REFUSE.
        case opening
        /// We received OPEN and are connecting to the local target.
        case dialing
        case open
        case closed
    }

    /// A frame that the peer sent where the protocol does not allow it.
    public enum Violation: Error, Equatable, Sendable, CustomStringConvertible {
        case unexpected(UnexpectedFrame, in: Phase)
        case dataAfterFin
        case secondFin
        case beyondCredit
        case creditOverflow

        public var description: String {
            switch self {
            case .unexpected(let frame, let phase): "\(frame.rawValue) in phase \(phase)"
            case .dataAfterFin: "DATA after FIN"
            case .secondFin: "second FIN"
            case .beyondCredit: "DATA beyond the granted credit"
            case .creditOverflow: "credit beyond 2^30 bytes"
            }
        }
    }

    public enum UnexpectedFrame: String, Sendable {
        case accept = "ACCEPT"
        case refuse = "REFUSE"
        case data = "DATA"
        case credit = "CREDIT"
        case fin = "FIN"
    }

    /// What the owner must do after an event, in order.
    public enum Action: Sendable, Equatable {
        /// Queue this frame for the peer.
        case send(StreamFrame)
        /// Write these bytes to the local socket and report the completion with
        /// ``localWriteCompleted(_:now:budget:into:)``.
        case write(ByteBuffer)
        /// Read the local socket once more.
        case read
        /// No more data will come from the peer: shut the local socket's output after
        /// the pending writes (the socket closes once both halves are shut).
        case shutdownOutput
        /// Close the local socket with a reset (the application sees an abort).
        case abort
        /// Reading stopped until the peer's send queue has room; call
        /// ``queueHasRoom(into:)`` then.
        case waitForQueueRoom
        /// The connection opened (count it once).
        case opened
        /// The connection ended abnormally (counted once).
        case ended(ConnectionEnd)
        /// The window grew by this many bytes (taken from the owner's pool).
        case windowGrew(Int)
        /// Both sides are done: forget the connection and return its window growth.
        case remove
    }

    public let key: StreamFrame.ConnectionKey
    public internal(set) var phase: Phase
    public internal(set) var flow: StreamFlowControl
    public internal(set) var hasSentFin = false
    public internal(set) var hasReceivedFin = false
    /// The local socket exists (an import's client from the start; an export's target
    /// once dialled) and has not gone away.
    public internal(set) var hasLocalSocket: Bool
    /// Bytes read from the socket beyond the credit, sent when credit arrives.
    var heldOutbound: ByteBuffer?
    /// The application shut its output before its FIN could be sent.
    var isFinPending = false
    /// A socket read was asked for and has not produced bytes yet.
    var isReadRequested = false
    /// Reading stopped for want of room in the peer's send queue.
    var isWaitingForQueueRoom = false
    /// Bytes from the peer handed to the socket whose write has not completed.
    public internal(set) var undeliveredBytes = 0
    var hasCountedEnd = false
    public internal(set) var lastActivity: NIODeadline
    public internal(set) var idleTimeout: TimeAmount?
    /// For a connection we open: when to give up waiting for the peer's answer.
    public internal(set) var openDeadline: NIODeadline?
    /// The run of the peer's gateway this connection belongs to (from its OPEN or
    /// ACCEPT); nil while our OPEN is unanswered.
    public internal(set) var peerInstance: UInt64?
    /// For a connection we open: the OPEN went out while our ring for the peer did not
    /// exist, so the peer could not answer it.
    public let openedWithoutRing: Bool

    /// A connection we open (an import's client connected).
    public static func opening(
        key: StreamFrame.ConnectionKey,
        window: Int,
        maximumWindow: Int? = nil,
        now: NIODeadline,
        idleTimeout: TimeAmount? = nil,
        openTimeout: TimeAmount? = nil,
        ringExists: Bool = true
    ) -> StreamConnectionState {
        StreamConnectionState(
            key: key,
            phase: .opening,
            flow: StreamFlowControl(window: window, maximumWindow: maximumWindow),
            hasLocalSocket: true,
            now: now,
            idleTimeout: idleTimeout,
            openDeadline: openTimeout.map { now + $0 },
            openedWithoutRing: !ringExists
        )
    }

    /// A connection the peer opened, granting us `peerCredit`; we dial the target.
    public static func dialing(
        key: StreamFrame.ConnectionKey,
        window: Int,
        maximumWindow: Int? = nil,
        peerCredit: UInt32,
        peerInstance: UInt64? = nil,
        now: NIODeadline,
        idleTimeout: TimeAmount? = nil
    ) -> StreamConnectionState {
        var state = StreamConnectionState(
            key: key,
            phase: .dialing,
            flow: StreamFlowControl(window: window, maximumWindow: maximumWindow, sendCredit: peerCredit),
            hasLocalSocket: false,
            now: now,
            idleTimeout: idleTimeout,
            openDeadline: nil,
            openedWithoutRing: false
        )
        state.peerInstance = peerInstance
        return state
    }

    private init(
        key: StreamFrame.ConnectionKey,
        phase: Phase,
        flow: StreamFlowControl,
        hasLocalSocket: Bool,
        now: NIODeadline,
        idleTimeout: TimeAmount?,
        openDeadline: NIODeadline?,
        openedWithoutRing: Bool
    ) {
        self.key = key
        self.phase = phase
        self.flow = flow
        self.hasLocalSocket = hasLocalSocket
        self.lastActivity = now
        self.idleTimeout = idleTimeout
        self.openDeadline = openDeadline
        self.openedWithoutRing = openedWithoutRing
    }

    public var isClosed: Bool { self.phase == .closed }

    /// The connection has a deadline that ``tick(now:into:)`` checks.
    public var hasTimer: Bool { self.idleTimeout != nil || (self.phase == .opening && self.openDeadline != nil) }

    /// How long a connection still opening waits for an answer once the peer's gateway
    /// restarted: its OPEN reached the new run (which answers after dialling, within
    /// its connect timeout) or went down with the old one.
    public static let openTimeoutAfterPeerRestart = TimeAmount.seconds(10)

    /// Bytes this connection holds: read beyond credit and not sent yet.
    public var heldBytes: Int { self.heldOutbound?.readableBytes ?? 0 }
}

// MARK: - Helpers shared by the event handlers

extension StreamConnectionState {
    /// Sends what `buffer` holds within the credit, in DATA frames of at most
    /// `maximumData` bytes.
    mutating func sendWithinCredit(_ buffer: inout ByteBuffer, maximumData: Int, into actions: inout [Action]) {
        while buffer.readableBytes > 0, self.flow.sendCredit > 0 {
            let count = min(buffer.readableBytes, self.flow.sendCredit, maximumData)
            let slice = buffer.readSlice(length: count)!
            self.flow.sent(count)
            actions.append(.send(.data(key: self.key, payload: slice)))
        }
    }

    /// Sends held bytes within the credit, then a pending FIN once they are all out.
    mutating func sendHeld(maximumData: Int, into actions: inout [Action]) {
        if var held = self.heldOutbound {
            self.heldOutbound = nil
            self.sendWithinCredit(&held, maximumData: maximumData, into: &actions)
            if held.readableBytes > 0 { self.heldOutbound = held }
        }
        if self.isFinPending, self.heldOutbound == nil { self.sendFin(into: &actions) }
    }

    mutating func sendFin(into actions: inout [Action]) {
        self.isFinPending = false
        guard self.phase == .open, !self.hasSentFin else { return }
        self.hasSentFin = true
        actions.append(.send(.fin(key: self.key)))
        if self.hasReceivedFin {
            self.phase = .closed
            self.finish(nil, into: &actions)
        }
    }

    /// Asks for a socket read if the peer can take what it brings.
    mutating func requestReadIfPossible(queueHasRoom: Bool, into actions: inout [Action]) {
        guard self.hasLocalSocket, self.phase == .open, !self.hasSentFin, !self.isFinPending, self.heldOutbound == nil,
            self.flow.sendCredit > 0, !self.isReadRequested, !self.isWaitingForQueueRoom
        else { return }
        guard queueHasRoom else {
            // The peer's queue is full (its ring drains slower than we read): wait.
            self.isWaitingForQueueRoom = true
            actions.append(.waitForQueueRoom)
            return
        }
        self.isReadRequested = true
        actions.append(.read)
    }

    /// Ends the connection from our side: RESET to the peer (if given and the peer
    /// may still know the connection), abort the local socket.
    mutating func abort(_ end: ConnectionEnd, resetReason: StreamFrame.ResetReason?, into actions: inout [Action]) {
        if let resetReason, self.phase != .closed { actions.append(.send(.reset(key: self.key, reason: resetReason))) }
        self.phase = .closed
        self.heldOutbound = nil
        self.abortLocal(into: &actions)
        self.finish(end, into: &actions)
    }

    mutating func abortLocal(into actions: inout [Action]) {
        guard self.hasLocalSocket else { return }
        self.hasLocalSocket = false
        actions.append(.abort)
    }

    /// Counts the end once (`nil`: a clean end, counted when the connection opened);
    /// removes the connection once it is closed.
    mutating func finish(_ end: ConnectionEnd?, into actions: inout [Action]) {
        if !self.hasCountedEnd {
            self.hasCountedEnd = true
            if let end { actions.append(.ended(end)) }
        }
        if self.phase == .closed { actions.append(.remove) }
    }

    mutating func violation(_ violation: Violation, into actions: inout [Action]) {
        let reason: StreamFrame.ResetReason = violation == .beyondCredit ? .flowControlViolation : .protocolViolation
        self.abort(.violation(violation), resetReason: reason, into: &actions)
    }
}
