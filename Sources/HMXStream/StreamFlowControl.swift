// SPDX-License-Identifier: Apache-2.0

/// One connection's credit in both directions and its receive-window autotuning, as a
/// plain value (the role swift-nio-ssh's window manager plays for an SSH channel).
///
/// - `sendCredit`: bytes we may still send; the peer grants it with ACCEPT and CREDIT.
/// - `receiveAllowance`: bytes the peer may still send us. DATA beyond it is a
///   violation: the peer is hostile or broken.
/// - Bytes the local application has taken are granted back in batches of at least a
///   quarter window. The window itself grows (doubling, up to ``maximumWindow``, out of
///   a budget the caller holds) when the application took a whole window within
///   ``growthInterval`` while the peer was held back by credit, like TCP's
///   receive-buffer autotuning.
public struct StreamFlowControl: Sendable, Equatable {
    /// Largest credit a peer may hold; more is a violation (and would overflow).
    public static let maximumCredit = 1 << 30

    /// The window grows when the local application takes a whole window within this
    /// time (nanoseconds) while the peer was limited by credit.
    public static let growthInterval: UInt64 = 4_000_000

    public enum Violation: Error, Equatable, Sendable {
        case beyondCredit
        case creditOverflow
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

        public static let none = Grant(increment: 0, growth: 0)
    }

    /// Bytes we may still send.
    public private(set) var sendCredit: Int
    /// Bytes the peer may still send us.
    public private(set) var receiveAllowance: Int
    /// Bytes delivered to the local application and not yet granted back.
    public private(set) var consumedNotGranted = 0
    /// The window we grant the peer: it starts at the configured window and may grow.
    public private(set) var window: Int
    /// Largest ``window`` this connection may grow to.
    public let maximumWindow: Int
    /// Bytes by which ``window`` has grown (out of the caller's shared budget).
    public private(set) var growth = 0
    /// The peer's allowance ran low since the last growth decision: it was sending as
    /// fast as our credit let it.
    public private(set) var peerWasLimited = false
    /// Bytes delivered since the current growth measurement began, and when it began
    /// (nil before the first delivery).
    private var measuredBytes = 0
    private var measureStart: UInt64?

    /// - Parameters:
    ///   - window: the window we grant the peer to begin with.
    ///   - maximumWindow: how far it may grow (default: it does not).
    ///   - sendCredit: what the peer granted us so far (0 until it answers).
    public init(window: Int, maximumWindow: Int? = nil, sendCredit: UInt32 = 0) {
        self.window = window
        self.maximumWindow = min(max(window, maximumWindow ?? window), Self.maximumCredit)
        self.receiveAllowance = window
        self.sendCredit = Int(min(sendCredit, UInt32(Self.maximumCredit)))
    }

    // MARK: - Our sending

    /// The peer's initial credit (ACCEPT).
    public mutating func granted(initialCredit credit: UInt32) -> Result<Void, Violation> {
        guard credit <= UInt32(Self.maximumCredit) else { return .failure(.creditOverflow) }
        self.sendCredit = Int(credit)
        return .success(())
    }

    /// CREDIT of `increment` bytes.
    /// - Returns: true if we had no credit before (reading may resume).
    public mutating func receivedCredit(_ increment: UInt32) -> Result<Bool, Violation> {
        guard self.sendCredit + Int(increment) <= Self.maximumCredit else { return .failure(.creditOverflow) }
        let wasBlocked = self.sendCredit == 0
        self.sendCredit += Int(increment)
        return .success(wasBlocked && increment > 0)
    }

    /// We send `count` bytes of DATA; never more than ``sendCredit``.
    public mutating func sent(_ count: Int) {
        precondition(count <= self.sendCredit)
        self.sendCredit -= count
    }

    // MARK: - Our receiving

    /// DATA of `count` bytes from the peer.
    public mutating func receivedData(_ count: Int) -> Result<Void, Violation> {
        guard count <= self.receiveAllowance else { return .failure(.beyondCredit) }
        self.receiveAllowance -= count
        if self.receiveAllowance < self.window / 8 { self.peerWasLimited = true }
        return .success(())
    }

    /// The local application took `count` bytes (its socket accepted them).
    ///
    /// - Parameters:
    ///   - now: monotonic nanoseconds.
    ///   - budget: bytes the window may still grow by (the caller's shared pool).
    ///   - mayGrant: false once no more credit is useful (the peer sent FIN, or the
    ///     connection ended): the bytes are counted but nothing is granted.
    /// - Returns: the credit to grant now (batched: at least a quarter window), or none.
    public mutating func delivered(_ count: Int, now: UInt64, budget: Int, mayGrant: Bool = true) -> Grant {
        self.consumedNotGranted += count
        guard mayGrant else { return .none }
        var growth = 0
        if let start = self.measureStart {
            self.measuredBytes += count
            if self.measuredBytes >= self.window {
                if now &- start <= Self.growthInterval, self.peerWasLimited, budget > 0 {
                    growth = min(self.window, self.maximumWindow - self.window, budget)
                    self.window += growth
                    self.growth += growth
                }
                self.measuredBytes = 0
                self.measureStart = now
                self.peerWasLimited = false
            }
        } else {
            // The first delivery starts the clock; its bytes came before it.
            self.measureStart = now
        }
        guard growth > 0 || self.consumedNotGranted >= max(1, self.window / 4) else { return .none }
        let increment = self.consumedNotGranted + growth
        self.consumedNotGranted = 0
        self.receiveAllowance += increment
        return Grant(increment: UInt32(increment), growth: growth)
    }
}
