// SPDX-License-Identifier: Apache-2.0
import HMXControl
import HMXCore
import NIOCore
import Synchronization

/// Everything `hmx-emulator status` shows: the hypervisor settings, and per domain
/// whether a process is attached, its rings (fill, waiting senders) and what waits to
/// go to it.
public struct EmulatorStatus: Sendable {
    public struct Domain: Sendable {
        public var id: UInt16
        public var name: String
        public var socket: String
        public var attached: Bool
        public var argo: Bool
        public var rings: [ArgoHypervisor.RingStatus]
        /// Xen's ring count (what the 128-ring limit checks).
        public var ringLimitCount: Int
        /// Bytes of results and events not yet taken by the domain's process.
        public var queuedOutputBytes: Int
        /// Its hypercalls are not read until it reads its results.
        public var held: Bool
    }

    public var argoEnabled: Bool
    public var wildcardRingsAllowed: Bool
    public var policyRules: Int
    public var uptimeSeconds: Double
    public var domains: [Domain]
}

extension EmulatorServer {
    /// The emulator's status now.
    public func status() -> EventLoopFuture<EmulatorStatus> {
        let config = self.state.withLock { $0.config }
        let core = self.core
        let startedAt = self.startedAt
        return self.eventLoop.submit {
            let core = core.value
            let hypervisor = core.hypervisor
            return EmulatorStatus(
                argoEnabled: hypervisor.settings.argoEnabled,
                wildcardRingsAllowed: hypervisor.settings.wildcardRingsAllowed,
                policyRules: hypervisor.settings.policy.rules.count,
                uptimeSeconds: Double((NIODeadline.now() - startedAt).nanoseconds) / 1e9,
                domains: config.domains.map { domain in
                    let connection = core.connection(of: domain.id)
                    return EmulatorStatus.Domain(
                        id: domain.id.rawValue,
                        name: domain.name,
                        socket: domain.socketPath,
                        attached: connection != nil,
                        argo: domain.argo,
                        rings: hypervisor.rings(of: domain.id),
                        ringLimitCount: hypervisor.ringLimitCount(of: domain.id),
                        queuedOutputBytes: connection?.queuedOutputBytes ?? 0,
                        held: connection?.isHeld ?? false
                    )
                }
            )
        }
    }
}

// MARK: - Output

extension EmulatorStatus {
    private func name(of id: UInt16) -> String {
        if id == ArgoABI.domidAny { return "any" }
        return self.domains.first { $0.id == id }.map { "\($0.name)(\(id))" } ?? "\(id)"
    }

    /// For a person.
    public var text: String {
        var lines: [String] = []
        let attached = self.domains.filter(\.attached).count
        lines.append(
            "emulator: argo \(self.argoEnabled ? "on" : "off"), wildcard rings \(self.wildcardRingsAllowed ? "allowed" : "refused"), \(self.policyRules) policy rules, \(attached) of \(self.domains.count) domains attached"
        )
        for domain in self.domains {
            let state = domain.attached ? "attached" : "not attached"
            let extra =
                domain.attached
                ? ", \(domain.queuedOutputBytes) bytes of results waiting\(domain.held ? ", held (its results are not being read)" : "")"
                : ""
            lines.append(
                "domain \(domain.id) \(domain.name): \(state) (socket \(domain.socket))\(domain.argo ? "" : ", argo disabled"), \(domain.rings.count) rings\(extra)"
            )
            for ring in domain.rings {
                lines.append(
                    "  ring port \(ring.port) from \(self.name(of: ring.partner)): \(ring.usedBytes) of \(ring.length) bytes used, messages up to \(ring.maximumMessageSize), \(ring.pendingSenders) senders waiting for space"
                )
            }
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// For scripts.
    public var json: String {
        let domains = self.domains.map { domain in
            let rings = domain.rings.map { ring in
                JSON.object([
                    ("port", "\(ring.port)"),
                    ("partner", ring.partner == ArgoABI.domidAny ? "null" : "\(ring.partner)"),
                    ("length", "\(ring.length)"),
                    ("used_bytes", "\(ring.usedBytes)"),
                    ("maximum_message_size", "\(ring.maximumMessageSize)"),
                    ("pending_senders", "\(ring.pendingSenders)"),
                ])
            }
            return JSON.object([
                ("id", "\(domain.id)"),
                ("name", JSON.string(domain.name)),
                ("socket", JSON.string(domain.socket)),
                ("attached", "\(domain.attached)"),
                ("argo", "\(domain.argo)"),
                ("ring_count", "\(domain.ringLimitCount)"),
                ("queued_output_bytes", "\(domain.queuedOutputBytes)"),
                ("held", "\(domain.held)"),
                ("rings", "[" + rings.joined(separator: ",") + "]"),
            ])
        }
        return JSON.object([
            ("argo", "\(self.argoEnabled)"),
            ("wildcard_rings_allowed", "\(self.wildcardRingsAllowed)"),
            ("policy_rules", "\(self.policyRules)"),
            ("uptime_seconds", "\(self.uptimeSeconds)"),
            ("domains", "[" + domains.joined(separator: ",") + "]"),
        ]) + "\n"
    }
}
