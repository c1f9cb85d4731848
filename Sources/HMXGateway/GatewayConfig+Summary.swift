// SPDX-License-Identifier: Apache-2.0
import HMXCore

// What `hmx-gateway check-config` prints: the effective mappings and what they cost.
extension GatewayConfig {
    /// One line per fact: the link, each export and import with its limits, the rings
    /// and their memory, flow control, metrics.
    public var summary: [String] {
        var lines = [
            "link: \(self.link.backend), gateway port \(self.link.port), ring \(self.link.ringSize) bytes per peer"
        ]
        for export in self.exports {
            let allow: String
            switch export.allow {
            case .any: allow = "any domain"
            case .domains(let set): allow = set.sorted().map { self.name(of: $0) }.joined(separator: ", ")
            }
            var allowText = allow
            if !export.remoteCallers.isEmpty {
                let relays = export.relays.sorted().map { self.name(of: $0) }.joined(separator: ", ")
                let callers = export.remoteCallers.map(\.description).joined(separator: ", ")
                allowText = (allow.isEmpty ? "" : "\(allow), ") + "\(callers) relayed by \(relays)"
            }
            var line = "export \(export.name): HMX port \(export.port) -> \(export.target); allow \(allowText); "
            line += "max \(export.maxConnections) connections"
            if export.maxConnectionsPerPeer < export.maxConnections {
                line += ", \(export.maxConnectionsPerPeer) per peer"
            }
            line += "; connect timeout \(export.connectTimeoutMilliseconds) ms"
            if export.idleTimeoutMilliseconds > 0 { line += "; idle timeout \(export.idleTimeoutMilliseconds) ms" }
            if let tls = export.tls {
                line += "; TLS: CAs \(tls.trust), name \(tls.serverName ?? "of the target")"
                if !tls.verifyHostname { line += " (not checked)" }
                if tls.certificate != nil { line += ", client certificate \(tls.certificate!)" }
            }
            if export.proxyProtocol == .v2 { line += "; PROXY v2" }
            if let prefix = export.sourceAddress {
                // The address of each domain it names, and the rule for the others.
                let named: [String] =
                    switch export.allow {
                    case .any: []
                    case .domains(let set): set.sorted().map { "\(self.name(of: $0)) from \(prefix.text(for: $0))" }
                    }
                line += "; connections come from \(prefix) + the domain id"
                if !named.isEmpty { line += " (\(named.joined(separator: ", ")))" }
            }
            lines.append(line)
        }
        for importConfig in self.imports {
            var line =
                "import \(importConfig.name): \(importConfig.listen) -> \(self.name(of: importConfig.peer)):\(importConfig.port); "
            line += "max \(importConfig.maxConnections) connections"
            if importConfig.idleTimeoutMilliseconds > 0 {
                line += "; idle timeout \(importConfig.idleTimeoutMilliseconds) ms"
            }
            if let tls = importConfig.tls {
                line += "; TLS certificate \(tls.certificate)"
                line += tls.clientCA.map { ", client certificates from \($0) required" } ?? ", no client certificate"
            }
            if let trusted = importConfig.trustedProxies {
                line += "; PROXY headers from \(trusted.map(\.description).joined(separator: ", ")) only"
            }
            lines.append(line)
        }
        let rings = self.partnerDomains.count + (self.wantsWildcardRing ? 1 : 0)
        let ringPages = Int(ArgoABI.pagesForRing(length: self.link.ringSize))
        let wildcard = self.wantsWildcardRing ? " + 1 wildcard ring (needs mac-permissive)" : ""
        lines.append(
            "rings: \(self.partnerDomains.count) partner ring(s)\(wildcard); memory for rings: \(rings * ringPages * 4) KiB"
        )
        var flow = "flow control: \(self.window) bytes window per connection and direction"
        if self.effectiveWindowMax > self.window, self.windowPool > 0 {
            flow +=
                ", growing to \(self.effectiveWindowMax) for fast streams (\(self.windowPool) bytes of growth in all)"
        }
        flow += "; \(self.peerInFlight.map { "\($0) bytes" } ?? "a ring's worth") on the way to each peer at once"
        lines.append(flow)
        if let metrics = self.metricsListen { lines.append("metrics: \(metrics)/metrics") }
        if let audit = self.audit { lines.append("audit records: \(audit)") }
        if let control = self.controlSocket { lines.append("control socket: \(control) (hmx-gateway status)") }
        if self.user != nil || self.group != nil {
            lines.append(
                "runs as user \(self.user ?? "(unchanged)"), group \(self.group ?? "(the user's)") once started"
            )
        }
        return lines
    }
}
