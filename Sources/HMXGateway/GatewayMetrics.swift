// SPDX-License-Identifier: Apache-2.0
import Metrics

/// The gateway's counters, created once with bounded dimensions (no per-connection
/// labels). Exposed at the optional Prometheus endpoint.
struct GatewayMetrics: Sendable {
    /// Why a connection did not open (or ended abnormally); one counter per reason.
    enum Outcome: String, CaseIterable, Sendable {
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
    }

    let importOutcomes: [Outcome: Counter]
    let exportOutcomes: [Outcome: Counter]
    let activeConnections: Meter
    let bytesToPeer: Counter
    let bytesFromPeer: Counter
    let messagesSent: Counter
    let messagesReceived: Counter
    let ringFull: Counter
    /// Messages that arrived before an earlier one (held until it came).
    let outOfOrder: Counter
    let malformedMessages: Counter
    /// Times a connection's receive window grew (window autotuning).
    let windowGrowths: Counter
    /// Bytes by which live connections' windows have grown (out of `limits.window_pool`).
    let windowPoolInUse: Meter

    init() {
        var importOutcomes: [Outcome: Counter] = [:]
        var exportOutcomes: [Outcome: Counter] = [:]
        for outcome in Outcome.allCases {
            importOutcomes[outcome] = Counter(label: "hmx_import_connections_total", dimensions: [("outcome", outcome.rawValue)])
            exportOutcomes[outcome] = Counter(label: "hmx_export_connections_total", dimensions: [("outcome", outcome.rawValue)])
        }
        self.importOutcomes = importOutcomes
        self.exportOutcomes = exportOutcomes
        self.activeConnections = Meter(label: "hmx_active_connections")
        self.bytesToPeer = Counter(label: "hmx_bytes_total", dimensions: [("direction", "to_peer")])
        self.bytesFromPeer = Counter(label: "hmx_bytes_total", dimensions: [("direction", "from_peer")])
        self.messagesSent = Counter(label: "hmx_messages_total", dimensions: [("direction", "sent")])
        self.messagesReceived = Counter(label: "hmx_messages_total", dimensions: [("direction", "received")])
        self.ringFull = Counter(label: "hmx_ring_full_total")
        self.outOfOrder = Counter(label: "hmx_messages_out_of_order_total")
        self.malformedMessages = Counter(label: "hmx_malformed_messages_total")
        self.windowGrowths = Counter(label: "hmx_window_growths_total")
        self.windowPoolInUse = Meter(label: "hmx_window_pool_bytes")
    }

    func count(_ outcome: Outcome, imported: Bool) {
        (imported ? self.importOutcomes : self.exportOutcomes)[outcome]?.increment()
    }
}
