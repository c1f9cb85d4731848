// SPDX-License-Identifier: Apache-2.0
import HMXControl
import HMXCore
import HMXStream

/// What the gateway's health endpoints report (`/readyz`, `/status`): the link, the
/// rings it needs, the import listeners, the connections.
public struct GatewayHealth: Sendable, Equatable {
    public struct Peer: Sendable, Equatable {
        public var name: String
        /// Our ring for the peer's messages is registered (on the emulator, a ring
        /// for a domain that is not running cannot be).
        public var ringRegistered: Bool
        /// Connections with this peer now.
        public var connections: Int
    }

    public struct Listener: Sendable, Equatable {
        public var name: String
        public var listen: String
        public var bound: Bool
    }

    public var linkUp: Bool
    public var peers: [Peer]
    /// nil: no export needs the wildcard ring.
    public var wildcardRing: Bool?
    public var listeners: [Listener]
    public var activeConnections: Int
    public var shuttingDown: Bool

    /// Why the gateway is not ready; empty when it is.
    public var notReadyReasons: [String] {
        var reasons: [String] = []
        if !self.linkUp { reasons.append("the link to the hypervisor is down") }
        if self.shuttingDown { reasons.append("shutting down") }
        for peer in self.peers where !peer.ringRegistered {
            reasons.append("no ring registered for peer \(peer.name) (is its domain running?)")
        }
        if self.wildcardRing == false { reasons.append("the wildcard ring is not registered") }
        for listener in self.listeners where !listener.bound {
            reasons.append("import \(listener.name) is not listening on \(listener.listen)")
        }
        return reasons
    }

    public var isReady: Bool { self.notReadyReasons.isEmpty }

    /// One line for the service manager's status.
    public var summary: String {
        let up = self.peers.filter(\.ringRegistered).count
        let state = self.notReadyReasons.first.map { "not ready: \($0)" } ?? "ready"
        return "\(state); rings for \(up) of \(self.peers.count) peers; \(self.activeConnections) connections"
    }

    /// The JSON of `/status`.
    public var json: String {
        let peers = self.peers.map { peer in
            JSON.object([
                ("name", JSON.string(peer.name)),
                ("ring_registered", "\(peer.ringRegistered)"),
                ("connections", "\(peer.connections)"),
            ])
        }
        let listeners = self.listeners.map { listener in
            JSON.object([
                ("name", JSON.string(listener.name)),
                ("listen", JSON.string(listener.listen)),
                ("bound", "\(listener.bound)"),
            ])
        }
        return JSON.object([
            ("ready", "\(self.isReady)"),
            ("not_ready_reasons", "[" + self.notReadyReasons.map(JSON.string).joined(separator: ",") + "]"),
            ("link_up", "\(self.linkUp)"),
            ("shutting_down", "\(self.shuttingDown)"),
            ("active_connections", "\(self.activeConnections)"),
            ("wildcard_ring", self.wildcardRing.map { "\($0)" } ?? "null"),
            ("peers", "[" + peers.joined(separator: ",") + "]"),
            ("imports", "[" + listeners.joined(separator: ",") + "]"),
        ])
    }
}

extension Gateway {
    /// The gateway's health now (on its event loop).
    func health() -> GatewayHealth {
        var byPeer: [DomainID: Int] = [:]
        for id in self.connections.keys { byPeer[id.peer, default: 0] += 1 }
        return GatewayHealth(
            linkUp: self.isLinkUp,
            peers: self.config.partnerDomains.sorted().map { domain in
                GatewayHealth.Peer(
                    name: self.config.name(of: domain),
                    ringRegistered: self.driver.hasRing(for: domain),
                    connections: byPeer[domain] ?? 0
                )
            },
            wildcardRing: self.config.wantsWildcardRing ? self.driver.hasWildcardRing : nil,
            listeners: self.config.imports.map { entry in
                GatewayHealth.Listener(
                    name: entry.name,
                    listen: "\(entry.listen)",
                    bound: self.listeners[entry.name] != nil
                )
            },
            activeConnections: self.activeConnectionCount,
            shuttingDown: self.isShuttingDown
        )
    }
}
