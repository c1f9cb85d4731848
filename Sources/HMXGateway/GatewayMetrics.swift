// SPDX-License-Identifier: Apache-2.0
import HMXStream
import Metrics

/// The gateway's counters, created once with bounded dimensions (no per-connection
/// labels). Exposed at the optional Prometheus endpoint.
struct GatewayMetrics: Sendable {
    typealias Outcome = ConnectionOutcome

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
    /// Warnings a peer provoked beyond its share of the log (not written).
    let warningsSuppressed: Counter
    /// Times an import listener paused because accepting failed (out of descriptors).
    let acceptPauses: Counter
    /// Datagrams of datagram flows sent to peers, and from peers to local sockets.
    let datagramsSent: Counter
    let datagramsReceived: Counter
    let datagramsDropped: [DatagramDropReason: Counter]

    init() {
        var importOutcomes: [Outcome: Counter] = [:]
        var exportOutcomes: [Outcome: Counter] = [:]
        for outcome in Outcome.allCases {
            importOutcomes[outcome] = Counter(
                label: "hmx_import_connections_total",
                dimensions: [("outcome", outcome.rawValue)]
            )
            exportOutcomes[outcome] = Counter(
                label: "hmx_export_connections_total",
                dimensions: [("outcome", outcome.rawValue)]
            )
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
        self.warningsSuppressed = Counter(label: "hmx_warnings_suppressed_total")
        self.acceptPauses = Counter(label: "hmx_accept_pauses_total")
        self.datagramsSent = Counter(label: "hmx_datagrams_total", dimensions: [("direction", "to_peer")])
        self.datagramsReceived = Counter(label: "hmx_datagrams_total", dimensions: [("direction", "from_peer")])
        var dropped: [DatagramDropReason: Counter] = [:]
        for reason in DatagramDropReason.allCases {
            dropped[reason] = Counter(label: "hmx_datagrams_dropped_total", dimensions: [("reason", reason.rawValue)])
        }
        self.datagramsDropped = dropped
    }

    func count(_ outcome: Outcome, imported: Bool) {
        (imported ? self.importOutcomes : self.exportOutcomes)[outcome]?.increment()
    }

    /// Adds what the stream layer counted since `previous`.
    func report(_ statistics: StreamStatistics, since previous: StreamStatistics) {
        func add(_ counter: Counter, _ now: Int, _ before: Int) {
            if now > before { counter.increment(by: Int64(now - before)) }
        }
        add(self.bytesToPeer, statistics.bytesToPeer, previous.bytesToPeer)
        add(self.bytesFromPeer, statistics.bytesFromPeer, previous.bytesFromPeer)
        add(self.messagesSent, statistics.messagesSent, previous.messagesSent)
        add(self.messagesReceived, statistics.messagesReceived, previous.messagesReceived)
        add(self.ringFull, statistics.ringFull, previous.ringFull)
        add(self.outOfOrder, statistics.outOfOrder, previous.outOfOrder)
        add(self.malformedMessages, statistics.malformedMessages, previous.malformedMessages)
        add(self.windowGrowths, statistics.windowGrowths, previous.windowGrowths)
        if let lost = self.datagramsDropped[.peerUnreachable] {
            add(lost, statistics.datagramsLost, previous.datagramsLost)
        }
        if statistics.windowPoolInUse != previous.windowPoolInUse {
            self.windowPoolInUse.set(statistics.windowPoolInUse)
        }
    }
}
