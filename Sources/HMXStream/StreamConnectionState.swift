// SPDX-License-Identifier: Apache-2.0

/// The state of one HMX stream connection, as a plain value: events in, actions out.
///
/// ```
///   opener:   opening ──accept──▶ open ──fin both ways──▶ closed
///                 └──refuse/reset──────────────────────────▶ closed
///   acceptor: dialing ──target up──▶ open ──...           (refuse if the dial fails)
/// ```
///
/// Flow control: each side grants the other a byte window. `sendCredit` is what we
/// may still send; `receiveAllowance` is what the peer may still send us. DATA beyond
/// the allowance, or after the peer's FIN, is a violation and resets the connection:
/// the peer is hostile or broken, and only this connection pays for it.
public struct StreamConnectionState: Sendable, Equatable {
    public enum Phase: Sendable, Equatable {
        /// We sent OPEN and wait for ACCEPT or REFUSE.
        case opening
        /// We received OPEN and are connecting to the local target.
        case dialing
        case open
        case closed
    }

    public private(set) var phase: Phase
    /// Bytes we may still send.
    public private(set) var sendCredit: Int
    /// Bytes the peer may still send us.
    public private(set) var receiveAllowance: Int
    /// Bytes delivered to the local application and not yet granted back.
    public private(set) var consumedNotGranted: Int
    public private(set) var hasSentFin = false
    public private(set) var hasReceivedFin = false
    /// The window we grant the peer: it starts at the configured window and may grow
    /// (see ``delivered(_:now:mayGrowBy:)``) up to ``maximumWindow``.
    public private(set) var window: Int
    /// Largest ``window`` this connection may grow to.
    public let maximumWindow: Int
    /// Set when the peer's allowance ran low since the last growth decision: it was
    /// sending as fast as our credit let it.
    public private(set) var peerWasLimited = false
    /// Bytes delivered since the current growth measurement began, and when it began
    /// (nil before the first delivery).
    private var measuredBytes = 0
    private var measureStart: UInt64?

    /// The window grows when the local application takes a whole window within this
    /// time (nanoseconds) while the peer was held back by credit: the window then
    /// covers at least this long of traffic, like TCP's receive-buffer autotuning.
    public static let growthInterval: UInt64 = 4_000_000

    /// Largest credit a peer may hold; more is a violation (and would overflow).
    public static let maximumCredit = 1 << 30

    public enum Violation: Error, Equatable, Sendable {
        case unexpected(String)
        case beyondCredit
        case creditOverflow
    }

    /// What the owner must do after an event.
    public enum Action: Equatable, Sendable {
        case none
        /// Start (or resume) reading the local application.
        case resumeReading
        /// Close the local application's connection (after pending writes) with this outcome.
        case closeLocal
        /// Half-close: no more data will come; shut down the local output after pending writes.
        case shutdownLocalOutput
        /// Abort the local connection (RST).
        case abortLocal
        /// Send a RESET to the peer, then abort locally.
        case resetBoth(StreamFrame.ResetReason)
    }

    /// A connection we open. Its window starts at `window` and may grow to
    /// `maximumWindow` (default: it does not grow).
    public static func opening(window: Int, maximumWindow: Int? = nil) -> StreamConnectionState {
        StreamConnectionState(phase: .opening, sendCredit: 0, window: window, maximumWindow: maximumWindow)
    }

    /// A connection the peer opened, granting it `peerCredit`.
    public static func dialing(window: Int, maximumWindow: Int? = nil, peerCredit: UInt32) -> StreamConnectionState {
        StreamConnectionState(
            phase: .dialing,
            sendCredit: Int(min(peerCredit, UInt32(Self.maximumCredit))),
            window: window,
            maximumWindow: maximumWindow
        )
    }

    private init(phase: Phase, sendCredit: Int, window: Int, maximumWindow: Int?) {
        self.phase = phase
        self.sendCredit = sendCredit
        self.window = window
        self.maximumWindow = min(max(window, maximumWindow ?? window), Self.maximumCredit)
        self.receiveAllowance = window
        self.consumedNotGranted = 0
    }

    // MARK: - From the peer

    /// ACCEPT for a connection we opened.
    public mutating func accepted(credit: UInt32) -> Result<Action, Violation> {
        guard self.phase == .opening else { return .failure(.unexpected("ACCEPT in phase \(self.phase)")) }
        guard credit <= UInt32(Self.maximumCredit) else { return .failure(.creditOverflow) }
        self.phase = .open
        self.sendCredit = Int(credit)
        return .success(.resumeReading)
    }

    /// REFUSE for a connection we opened.
    public mutating func refused() -> Result<Action, Violation> {
        guard self.phase == .opening else { return .failure(.unexpected("REFUSE in phase \(self.phase)")) }
        self.phase = .closed
        return .success(.abortLocal)
    }

    /// DATA of `count` bytes.
    public mutating func receivedData(_ count: Int) -> Result<Action, Violation> {
        guard self.phase == .open else { return .failure(.unexpected("DATA in phase \(self.phase)")) }
        guard !self.hasReceivedFin else { return .failure(.unexpected("DATA after FIN")) }
        guard count <= self.receiveAllowance else { return .failure(.beyondCredit) }
        self.receiveAllowance -= count
        if self.receiveAllowance < self.window / 8 { self.peerWasLimited = true }
        return .success(.none)
    }

    /// CREDIT of `increment` bytes.
    public mutating func receivedCredit(_ increment: UInt32) -> Result<Action, Violation> {
        guard self.phase == .open else { return .failure(.unexpected("CREDIT in phase \(self.phase)")) }
        guard self.sendCredit + Int(increment) <= Self.maximumCredit else { return .failure(.creditOverflow) }
        let wasBlocked = self.sendCredit == 0
        self.sendCredit += Int(increment)
        return .success(wasBlocked && increment > 0 && !self.hasSentFin ? .resumeReading : .none)
    }

    /// FIN: the peer will send no more data.
    public mutating func receivedFin() -> Result<Action, Violation> {
        guard self.phase == .open else { return .failure(.unexpected("FIN in phase \(self.phase)")) }
        guard !self.hasReceivedFin else { return .failure(.unexpected("second FIN")) }
        self.hasReceivedFin = true
        if self.hasSentFin {
            self.phase = .closed
            return .success(.closeLocal)
        }
        return .success(.shutdownLocalOutput)
    }

    /// RESET from the peer.
    public mutating func receivedReset() -> Action {
        guard self.phase != .closed else { return .none }
        self.phase = .closed
        return .abortLocal
    }

    // MARK: - From the local side

    /// The local target is connected (acceptor side): ACCEPT is sent.
    public mutating func dialSucceeded() -> Result<Action, Violation> {
        guard self.phase == .dialing else { return .failure(.unexpected("dial completed in phase \(self.phase)")) }
        self.phase = .open
        return .success(.resumeReading)
    }

    /// The local target could not be reached (acceptor side): REFUSE is sent.
    public mutating func dialFailed() {
        self.phase = .closed
    }

    /// We send `count` bytes of DATA. The caller never sends more than ``sendCredit``.
    public mutating func sent(_ count: Int) {
        precondition(count <= self.sendCredit && self.phase == .open && !self.hasSentFin)
        self.sendCredit -= count
    }

    /// Credit to send the peer after a delivery.
    public struct Grant: Equatable, Sendable {
        /// The CREDIT increment to send now (0: none yet).
        public var increment: UInt32
        /// How much of `increment` is new window rather than bytes taken.
        public var growth: Int

        public init(increment: UInt32, growth: Int) {
            self.increment = increment
            self.growth = growth
        }
    }

    /// The local application took `count` bytes (its socket accepted them); returns the
    /// credit to grant now (batched: at least a quarter window), or none.
    ///
    /// The window grows (doubling, at most to ``maximumWindow`` and by at most
    /// `budget` bytes) when the application took a whole window within
    /// ``growthInterval`` (measured from the previous such window, or from the first
    /// delivery; `now` is monotonic nanoseconds) while the peer's allowance ran low:
    /// the connection is limited by the window, not by either application. A reader
    /// slower than that stops the growth once its socket buffer is full (until then
    /// the kernel takes bytes for it at memory speed).
    public mutating func delivered(_ count: Int, now: UInt64 = 0, mayGrowBy budget: Int = 0) -> Grant {
        guard self.phase == .open || self.phase == .closed else { return Grant(increment: 0, growth: 0) }
        self.consumedNotGranted += count
        guard self.phase == .open, !self.hasReceivedFin else { return Grant(increment: 0, growth: 0) }
        var growth = 0
        if let start = self.measureStart {
            self.measuredBytes += count
            if self.measuredBytes >= self.window {
                if now &- start <= Self.growthInterval, self.peerWasLimited, budget > 0 {
                    growth = min(self.window, self.maximumWindow - self.window, budget)
                    self.window += growth
                }
                self.measuredBytes = 0
                self.measureStart = now
                self.peerWasLimited = false
            }
        } else {
            // The first delivery starts the clock; its bytes came before it.
            self.measureStart = now
        }
        guard growth > 0 || self.consumedNotGranted >= max(1, self.window / 4) else { return Grant(increment: 0, growth: 0) }
        let increment = self.consumedNotGranted + growth
        self.consumedNotGranted = 0
        self.receiveAllowance += increment
        return Grant(increment: UInt32(increment), growth: growth)
    }

    /// The local application shut its output: FIN is sent.
    /// - Returns: true if the connection is now fully closed.
    public mutating func sentFin() -> Bool {
        guard self.phase == .open, !self.hasSentFin else { return self.phase == .closed }
        self.hasSentFin = true
        if self.hasReceivedFin { self.phase = .closed }
        return self.phase == .closed
    }

    /// The local side aborted or the connection is torn down.
    public mutating func aborted() {
        self.phase = .closed
    }

    public var isClosed: Bool { self.phase == .closed }
}
