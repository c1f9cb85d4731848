// SPDX-License-Identifier: Apache-2.0

/// What one domain process can make the emulator hold, so that a process that
/// misbehaves (on purpose or not) costs only its own domain (see docs/EMULATOR.md).
public struct EmulatorLimits: Sendable, Equatable {
    /// Bytes of results and events queued for a domain that is not reading its socket
    /// (beyond what the kernel's socket buffers hold). Above it, the emulator takes no
    /// more hypercalls from that domain until it has read half of them: as a vCPU that
    /// is blocked in a hypercall issues no more.
    public var queuedOutputBytes: Int
    /// How long a process that connects to a domain's socket has to send its hello.
    public var handshakeTimeout: Duration
    /// Attach handshakes under way at once per domain socket. Further connections to
    /// that socket wait in its listen backlog, so that processes connecting to one
    /// domain's socket and saying nothing delay only attaches as that domain.
    public var handshakesPerDomain: Int

    public init(
        queuedOutputBytes: Int = 64 << 10,
        handshakeTimeout: Duration = .seconds(2),
        handshakesPerDomain: Int = 4
    ) {
        precondition(queuedOutputBytes >= 2 && handshakesPerDomain >= 1 && handshakeTimeout > .zero)
        self.queuedOutputBytes = queuedOutputBytes
        self.handshakeTimeout = handshakeTimeout
        self.handshakesPerDomain = handshakesPerDomain
    }
}
