// SPDX-License-Identifier: Apache-2.0

/// How a connection opened or why it did not (or ended abnormally): one counter per
/// outcome in the gateway's metrics, distinct in logs.
public enum ConnectionOutcome: String, CaseIterable, Sendable {
    case opened
    case peerNotRunning = "peer_not_running"
    case noRing = "no_ring"
    case deniedByHypervisor = "denied_by_hypervisor_policy"
    case deniedByGateway = "denied_by_gateway_policy"
    case noSuchService = "no_such_service"
    case targetRefused = "target_refused"
    case targetTimedOut = "target_timed_out"
    case limitReached = "limit_reached"
    case shuttingDown = "shutting_down"
    case protocolError = "protocol_error"
    case reset
    case peerLost = "peer_lost"
    case idleTimeout = "idle_timeout"
    // A `tls://` endpoint's handshake (local only: the wire says target_refused).
    case tlsHandshakeFailed = "tls_handshake_failed"
    case tlsUntrusted = "tls_untrusted"
    case tlsExpired = "tls_expired"
    case tlsHostnameMismatch = "tls_hostname_mismatch"
    case tlsNoClientCertificate = "tls_no_client_certificate"
    /// A PROXY header from a source not trusted to send one, or none (or a malformed
    /// one) from a source that must (`proxy_protocol: accept`).
    case proxyHeaderRefused = "proxy_header_refused"

    /// What a connection whose OPEN was answered with `reason` counts as.
    public init(refused reason: StreamFrame.RefuseReason) {
        switch reason {
        case .noSuchService: self = .noSuchService
        case .deniedByGateway: self = .deniedByGateway
        case .targetRefused: self = .targetRefused
        case .targetTimedOut: self = .targetTimedOut
        case .limitReached: self = .limitReached
        case .shuttingDown: self = .shuttingDown
        case .protocolError, .unsupportedVersion: self = .protocolError
        }
    }
}

/// Why a connection ended other than by both sides' FIN: what the gateway logs and
/// counts (once per connection).
public enum ConnectionEnd: Sendable, Equatable {
    /// The peer answered our OPEN with REFUSE.
    case refusedByPeer(StreamFrame.RefuseReason)
    /// We answered the peer's OPEN with REFUSE (admission or dial).
    case refusedHere(StreamFrame.RefuseReason)
    /// The peer sent RESET.
    case resetByPeer(StreamFrame.ResetReason)
    /// The peer broke the protocol on this connection; we sent RESET.
    case violation(StreamConnectionState.Violation)
    /// The local application reset its connection, or its socket went away with bytes
    /// from the peer undelivered; we sent RESET.
    case localReset
    /// Our OPEN had no answer in time (counted as the peer lost): the answer was lost
    /// or could not reach us.
    case openTimedOut
    /// We ended it: peer lost, shutdown, idle timeout, missing ring.
    case terminated(ConnectionOutcome)

    public var outcome: ConnectionOutcome {
        switch self {
        case .refusedByPeer(let reason), .refusedHere(let reason): ConnectionOutcome(refused: reason)
        case .resetByPeer, .localReset: .reset
        case .violation: .protocolError
        case .openTimedOut: .peerLost
        case .terminated(let outcome): outcome
        }
    }
}
