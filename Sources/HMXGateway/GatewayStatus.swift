// SPDX-License-Identifier: Apache-2.0
import HMXControl
import HMXCore
import HMXStream
import NIOCore

/// What the gateway counted for one mapping since it started (or since the mapping
/// appeared).
struct MappingCounters {
    /// Connections that opened (the target connected).
    var opened = 0
    /// How connections ended or why they were refused (clean closes are not counted).
    var outcomes: [ConnectionOutcome: Int] = [:]
    /// Bytes of connections that have ended, each way (of datagram flows: all).
    var bytesToPeer = 0
    var bytesFromPeer = 0
    /// Datagrams of a datagram mapping's flows each way, and those dropped by reason.
    var datagramsToPeer = 0
    var datagramsFromPeer = 0
    var datagramsDropped: [DatagramDropReason: Int] = [:]

    mutating func add(_ handler: StreamGlueHandler?) {
        self.bytesToPeer += handler?.bytesRead ?? 0
        self.bytesFromPeer += handler?.bytesWritten ?? 0
    }
}

/// Everything `hmx-gateway status` shows: the gateway's health, each peer's ring and
/// load, each mapping's connections, bytes and outcomes, the window pool.
public struct GatewayStatus: Sendable {
    public struct Peer: Sendable {
        public var name: String
        public var domain: UInt16
        /// `registered`, `registering` or `absent`: our partner ring for it.
        public var ring: String
        /// The largest message its ring takes, once learnt.
        public var messageSize: Int?
        /// Seconds since it was last heard from (nil: never).
        public var lastHeardSeconds: Double?
        public var connections: Int
        public var queuedFrames: Int
        public var inboxBytes: Int
        public var framesHandled: Int
    }

    public struct Mapping: Sendable {
        /// `export` or `import`.
        public var kind: String
        public var name: String
        public var servicePort: UInt32
        /// An import's peer, or who an export allows (`any` or names).
        public var peers: [String]
        /// An import's listener or an export's target.
        public var endpoint: String
        /// An import's listener is bound (nil for exports).
        public var listening: Bool?
        public var active: Int
        public var maxConnections: Int
        public var opened: Int
        /// Outcomes other than a clean close, by name, sorted.
        public var outcomes: [(String, Int)]
        /// Bytes of ended and live connections each way.
        public var bytesToPeer: Int
        public var bytesFromPeer: Int
        /// A datagram mapping (its connections are flows).
        public var datagram: Bool
        public var datagramsToPeer: Int
        public var datagramsFromPeer: Int
        /// Datagrams dropped, by reason, sorted.
        public var datagramsDropped: [(String, Int)]
    }

    public var domain: UInt16
    public var backend: String
    public var uptimeSeconds: Double
    public var health: GatewayHealth
    public var peers: [Peer]
    public var mappings: [Mapping]
    /// OPENs refused before an export was found, by outcome.
    public var unmappedRefusals: [(String, Int)]
    public var window: Int
    public var windowMax: Int
    public var windowPool: Int
    public var windowPoolInUse: Int
    public var statistics: StreamStatistics
}

extension Gateway {
    /// The gateway's status now (on its event loop).
    func status() -> GatewayStatus {
        let now = self.driver.now
        let health = self.health()
        var byPeer: [DomainID: Int] = [:]
        var liveBytes: [String: (toPeer: Int, fromPeer: Int)] = [:]
        for (id, connection) in self.connections {
            byPeer[id.peer, default: 0] += 1
            let bytes = liveBytes[connection.mapping] ?? (0, 0)
            liveBytes[connection.mapping] = (
                bytes.toPeer + (connection.handler?.bytesRead ?? 0),
                bytes.fromPeer + (connection.handler?.bytesWritten ?? 0)
            )
        }
        let domains = self.config.partnerDomains.union(byPeer.keys).sorted()
        let peers = domains.map { domain in
            let load = self.driver.load(of: domain)
            let ring: String =
                switch load?.ring {
                case .registered: "registered"
                case .registering: "registering"
                case .absent, nil: "absent"
                }
            return GatewayStatus.Peer(
                name: self.config.peerName(of: domain) ?? "\(domain)",
                domain: domain.rawValue,
                ring: ring,
                messageSize: load?.messageSize,
                lastHeardSeconds: load.map { Double((now - $0.lastHeard).nanoseconds) / 1e9 },
                connections: byPeer[domain] ?? 0,
                queuedFrames: load?.queuedFrames ?? 0,
                inboxBytes: load?.inboxBytes ?? 0,
                framesHandled: load?.framesHandled ?? 0
            )
        }
        func outcomes(_ counts: [ConnectionOutcome: Int]) -> [(String, Int)] {
            counts.filter { $0.value > 0 }.map { ($0.key.rawValue, $0.value) }.sorted { $0.0 < $1.0 }
        }
        func mapping(
            _ kind: String,
            _ name: String,
            port: UInt32,
            peers: [String],
            endpoint: Endpoint,
            listening: Bool?,
            maxConnections: Int
        ) -> GatewayStatus.Mapping {
            let key = "\(kind):\(name)"
            let counters = self.mappingCounters[key] ?? MappingCounters()
            let live = liveBytes[key] ?? (0, 0)
            return GatewayStatus.Mapping(
                kind: kind,
                name: name,
                servicePort: port,
                peers: peers,
                endpoint: "\(endpoint)",
                listening: listening,
                active: self.countsByMapping[key] ?? 0,
                maxConnections: maxConnections,
                opened: counters.opened,
                outcomes: outcomes(counters.outcomes),
                bytesToPeer: counters.bytesToPeer + live.toPeer,
                bytesFromPeer: counters.bytesFromPeer + live.fromPeer,
                datagram: endpoint.isDatagram,
                datagramsToPeer: counters.datagramsToPeer,
                datagramsFromPeer: counters.datagramsFromPeer,
                datagramsDropped: counters.datagramsDropped.filter { $0.value > 0 }.map { ($0.key.rawValue, $0.value) }
                    .sorted { $0.0 < $1.0 }
            )
        }
        let exports = self.config.exports.map { export in
            let allowed: [String] =
                switch export.allow {
                case .any: ["any"]
                case .domains(let set): set.sorted().map { self.config.name(of: $0) }
                }
            return mapping(
                "export",
                export.name,
                port: export.port,
                peers: allowed,
                endpoint: export.target,
                listening: nil,
                maxConnections: export.maxConnections
            )
        }
        let imports = self.config.imports.map { entry in
            mapping(
                "import",
                entry.name,
                port: entry.port,
                peers: [self.config.name(of: entry.peer)],
                endpoint: entry.listen,
                listening: self.listeners[entry.name] != nil,
                maxConnections: entry.maxConnections
            )
        }
        let statistics = self.driver.statistics
        return GatewayStatus(
            domain: self.driver.link.localDomain.rawValue,
            backend: "\(self.config.link.backend)",
            uptimeSeconds: Double((now - self.startedAt).nanoseconds) / 1e9,
            health: health,
            peers: peers,
            mappings: exports + imports,
            unmappedRefusals: outcomes(self.unmappedRefusals),
            window: self.config.window,
            windowMax: self.config.effectiveWindowMax,
            windowPool: self.config.windowPool,
            windowPoolInUse: statistics.windowPoolInUse,
            statistics: statistics
        )
    }
}

// MARK: - Output

extension GatewayStatus {
    /// For a person: what is asked first when something does not connect.
    public var text: String {
        var lines: [String] = []
        let state = self.health.isReady ? "ready" : "NOT READY"
        lines.append(
            "gateway: domain \(self.domain) on \(self.backend), \(state), up \(Self.duration(self.uptimeSeconds)), \(self.health.activeConnections) connections"
        )
        for reason in self.health.notReadyReasons { lines.append("  not ready: \(reason)") }
        lines.append("")
        lines.append("peers:")
        if self.peers.isEmpty { lines.append("  (none)") }
        for peer in self.peers {
            let size = peer.messageSize.map { "message size \($0)" } ?? "message size not known yet"
            let heard = peer.lastHeardSeconds.map { "heard \(Self.duration($0)) ago" } ?? "never heard"
            lines.append(
                "  \(peer.name) (domain \(peer.domain)): ring \(peer.ring), \(size), \(heard), \(peer.connections) connections, \(peer.queuedFrames) frames queued, \(peer.inboxBytes) bytes waiting, \(peer.framesHandled) frames handled"
            )
        }
        lines.append("")
        lines.append("mappings:")
        if self.mappings.isEmpty { lines.append("  (none)") }
        for mapping in self.mappings {
            let arrow =
                mapping.kind == "export"
                ? "HMX port \(mapping.servicePort) -> \(mapping.endpoint), for \(mapping.peers.joined(separator: ", "))"
                : "\(mapping.endpoint) -> \(mapping.peers.joined(separator: ", ")) port \(mapping.servicePort)"
                    + (mapping.listening == false ? " (NOT LISTENING)" : "")
            lines.append("  \(mapping.kind) \(mapping.name): \(arrow)")
            let outcomes =
                mapping.outcomes.isEmpty
                ? "none failed" : mapping.outcomes.map { "\($0.0) \($0.1)" }.joined(separator: ", ")
            if mapping.datagram {
                let dropped =
                    mapping.datagramsDropped.isEmpty
                    ? "none dropped"
                    : "dropped: " + mapping.datagramsDropped.map { "\($0.0) \($0.1)" }.joined(separator: ", ")
                lines.append(
                    "    flows \(mapping.active)/\(mapping.maxConnections) now, \(mapping.opened) opened; datagrams \(mapping.datagramsToPeer) to peer, \(mapping.datagramsFromPeer) from peer (bytes \(mapping.bytesToPeer), \(mapping.bytesFromPeer)); \(dropped); \(outcomes)"
                )
            } else {
                lines.append(
                    "    connections \(mapping.active)/\(mapping.maxConnections) now, \(mapping.opened) opened; bytes \(mapping.bytesToPeer) to peer, \(mapping.bytesFromPeer) from peer; \(outcomes)"
                )
            }
        }
        if !self.unmappedRefusals.isEmpty {
            lines.append(
                "  refused before any export matched: "
                    + self.unmappedRefusals.map { "\($0.0) \($0.1)" }.joined(separator: ", ")
            )
        }
        lines.append("")
        lines.append(
            "windows: \(self.window) bytes to begin with, up to \(self.windowMax); pool \(self.windowPoolInUse) of \(self.windowPool) bytes in use"
        )
        let s = self.statistics
        lines.append(
            "messages: \(s.messagesSent) sent, \(s.messagesReceived) received; ring full \(s.ringFull) times; \(s.outOfOrder) out of order; \(s.malformedMessages) malformed; \(s.datagramsLost) datagrams lost with a peer given up"
        )
        return lines.joined(separator: "\n") + "\n"
    }

    /// For scripts.
    public var json: String {
        func optional(_ value: (some Any)?) -> String { value.map { "\($0)" } ?? "null" }
        func counts(_ pairs: [(String, Int)]) -> String { JSON.object(pairs.map { ($0.0, "\($0.1)") }) }
        let peers = self.peers.map { peer in
            JSON.object([
                ("name", JSON.string(peer.name)),
                ("domain", "\(peer.domain)"),
                ("ring", JSON.string(peer.ring)),
                ("message_size", optional(peer.messageSize)),
                ("last_heard_seconds", optional(peer.lastHeardSeconds)),
                ("connections", "\(peer.connections)"),
                ("queued_frames", "\(peer.queuedFrames)"),
                ("inbox_bytes", "\(peer.inboxBytes)"),
                ("frames_handled", "\(peer.framesHandled)"),
            ])
        }
        let mappings = self.mappings.map { mapping in
            JSON.object([
                ("kind", JSON.string(mapping.kind)),
                ("name", JSON.string(mapping.name)),
                ("service_port", "\(mapping.servicePort)"),
                ("peers", "[" + mapping.peers.map(JSON.string).joined(separator: ",") + "]"),
                (mapping.kind == "export" ? "target" : "listen", JSON.string(mapping.endpoint)),
                ("listening", optional(mapping.listening)),
                ("active_connections", "\(mapping.active)"),
                ("max_connections", "\(mapping.maxConnections)"),
                ("opened", "\(mapping.opened)"),
                ("outcomes", counts(mapping.outcomes)),
                ("bytes_to_peer", "\(mapping.bytesToPeer)"),
                ("bytes_from_peer", "\(mapping.bytesFromPeer)"),
                ("datagram", "\(mapping.datagram)"),
                ("datagrams_to_peer", "\(mapping.datagramsToPeer)"),
                ("datagrams_from_peer", "\(mapping.datagramsFromPeer)"),
                ("datagrams_dropped", counts(mapping.datagramsDropped)),
            ])
        }
        let s = self.statistics
        return JSON.object([
            ("domain", "\(self.domain)"),
            ("backend", JSON.string(self.backend)),
            ("uptime_seconds", "\(self.uptimeSeconds)"),
            ("health", self.health.json),
            ("peers", "[" + peers.joined(separator: ",") + "]"),
            ("mappings", "[" + mappings.joined(separator: ",") + "]"),
            ("refused_before_export", counts(self.unmappedRefusals)),
            (
                "windows",
                JSON.object([
                    ("initial", "\(self.window)"), ("maximum", "\(self.windowMax)"),
                    ("pool", "\(self.windowPool)"), ("pool_in_use", "\(self.windowPoolInUse)"),
                ])
            ),
            (
                "messages",
                JSON.object([
                    ("sent", "\(s.messagesSent)"), ("received", "\(s.messagesReceived)"),
                    ("ring_full", "\(s.ringFull)"), ("out_of_order", "\(s.outOfOrder)"),
                    ("malformed", "\(s.malformedMessages)"), ("datagrams_lost", "\(s.datagramsLost)"),
                ])
            ),
        ]) + "\n"
    }

    /// `3.2s`, `4m05s`, `2h03m`.
    static func duration(_ seconds: Double) -> String {
        if seconds < 60 { return "\((seconds * 10).rounded() / 10)s" }
        let whole = Int(seconds)
        func two(_ value: Int) -> String { value < 10 ? "0\(value)" : "\(value)" }
        if whole < 3600 { return "\(whole / 60)m\(two(whole % 60))s" }
        return "\(whole / 3600)h\(two(whole / 60 % 60))m"
    }
}
