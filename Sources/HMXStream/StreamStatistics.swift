// SPDX-License-Identifier: Apache-2.0

/// Counters of the stream layer, as plain integers the owner copies into its metrics
/// (the stream layer depends on no metrics library and reaches no global).
public struct StreamStatistics: Sendable, Equatable {
    public var bytesToPeer = 0
    public var bytesFromPeer = 0
    public var messagesSent = 0
    public var messagesReceived = 0
    /// Sends that found the peer's ring full (EAGAIN).
    public var ringFull = 0
    /// Messages that arrived before an earlier one (held until it came).
    public var outOfOrder = 0
    /// Messages that were not stream messages or broke the protocol's framing.
    public var malformedMessages = 0
    /// Times a connection's receive window grew.
    public var windowGrowths = 0
    /// Bytes by which live connections' windows have grown (out of the pool).
    public var windowPoolInUse = 0
    /// Datagrams of flows sent to peers and received from them.
    public var datagramsSent = 0
    public var datagramsReceived = 0
    /// Datagrams queued for a peer that was given up (a send to it failed for good, or
    /// it stopped answering), or queued before the size of its ring was known and then
    /// larger than a message to it may be: they never reach it.
    public var datagramsLost = 0

    public init() {}
}
