// SPDX-License-Identifier: Apache-2.0
import HMXCore
import HMXEmulator

/// The pieces of one host's deployment that decide whether a mapping works: the
/// gateways (each with the domain it runs in) and the hypervisor (its settings,
/// domains and policy). `hmx-gateway explain` reads one from files and checks it
/// with ``DeploymentExplainer``.
public struct Deployment: Sendable {
    /// One gateway and the domain it runs in.
    public struct Gateway: Sendable {
        public var config: GatewayConfig
        public var domain: DomainID

        public init(config: GatewayConfig, domain: DomainID) {
            self.config = config
            self.domain = domain
        }
    }

    /// A domain as the hypervisor knows it.
    public struct Domain: Sendable, Equatable {
        public var id: DomainID
        public var name: String
        /// False: the domain has no Argo state (every operation fails).
        public var argo: Bool
        /// The memory a gateway's process may bring as this domain (emulator only).
        public var maximumMemory: Int?

        public init(id: DomainID, name: String, argo: Bool = true, maximumMemory: Int? = nil) {
            self.id = id
            self.name = name
            self.argo = argo
            self.maximumMemory = maximumMemory
        }
    }

    /// What the hypervisor enforces.
    public struct Hypervisor: Sendable {
        public enum Kind: Sendable, Equatable {
            /// hmx-emulator, with its configuration file.
            case emulator(file: String)
            /// Xen, from its boot options (`argo=1`, `mac-permissive=1`).
            case xen
        }

        public var kind: Kind
        public var argoEnabled: Bool
        public var wildcardRingsAllowed: Bool
        public var domains: [Domain]
        /// The emulator's firewall; nil on Xen without an XSM policy (every domain
        /// may send to every ring that accepts it).
        public var policy: EmulatorPolicy?

        public init(
            kind: Kind,
            argoEnabled: Bool,
            wildcardRingsAllowed: Bool,
            domains: [Domain],
            policy: EmulatorPolicy?
        ) {
            self.kind = kind
            self.argoEnabled = argoEnabled
            self.wildcardRingsAllowed = wildcardRingsAllowed
            self.domains = domains
            self.policy = policy
        }

        /// The emulator's configuration as a hypervisor.
        public init(emulator config: EmulatorConfig) {
            self.init(
                kind: .emulator(file: config.file),
                argoEnabled: config.argoEnabled,
                wildcardRingsAllowed: config.wildcardRingsAllowed,
                domains: config.domains.map {
                    Domain(id: $0.id, name: $0.name, argo: $0.argo, maximumMemory: $0.maximumMemory)
                },
                policy: config.policy
            )
        }

        public func domain(_ id: DomainID) -> Domain? { self.domains.first { $0.id == id } }

        /// Whether the hypervisor lets `source` send to `port` of `destination`.
        public func allows(_ source: DomainID, _ destination: DomainID, port: HMXPort) -> Bool {
            self.policy?.allows(source: source, destination: destination, port: port) ?? true
        }

        /// How a user names the place to change: the emulator's file or Xen's boot line.
        var place: String {
            switch self.kind {
            case .emulator(let file): file
            case .xen: "Xen's boot options"
            }
        }

        func name(of id: DomainID) -> String {
            self.domain(id).map { "\($0.name)(\(id))" } ?? "\(id)"
        }
    }

    public var gateways: [Gateway]
    public var hypervisor: Hypervisor
    /// Gateway files whose domain could not be found (their link names no domain).
    public var unplaced: [(config: GatewayConfig, reason: String)]

    public init(gateways: [Gateway], hypervisor: Hypervisor, unplaced: [(config: GatewayConfig, reason: String)] = []) {
        self.gateways = gateways
        self.hypervisor = hypervisor
        self.unplaced = unplaced
    }

    /// On the emulator, a gateway's domain is the one whose socket its link names.
    public static func onEmulator(_ emulator: EmulatorConfig, gateways configs: [GatewayConfig]) -> Deployment {
        var gateways: [Gateway] = []
        var unplaced: [(config: GatewayConfig, reason: String)] = []
        for config in configs {
            guard case .emulator(let socket) = config.link.backend else {
                unplaced.append((config, "its link is xen: true, but the hypervisor is the emulator"))
                continue
            }
            guard let domain = emulator.domains.first(where: { $0.socketPath == socket }) else {
                unplaced.append(
                    (config, "link.emulator \(socket) is not the socket of any domain in \(emulator.file)")
                )
                continue
            }
            gateways.append(Gateway(config: config, domain: domain.id))
        }
        return Deployment(gateways: gateways, hypervisor: Hypervisor(emulator: emulator), unplaced: unplaced)
    }

    public func gateway(of domain: DomainID) -> Gateway? { self.gateways.first { $0.domain == domain } }
}

extension GatewayConfig {
    /// Rings this gateway registers: one per partner domain, and the wildcard ring if
    /// an export accepts any domain.
    public var ringCount: Int { self.partnerDomains.count + (self.wantsWildcardRing ? 1 : 0) }

    /// Whether this gateway registers a ring that `domain`'s messages can land in:
    /// a partner ring for it, or the wildcard ring where the hypervisor permits one.
    func hasRing(for domain: DomainID, wildcardAllowed: Bool) -> Bool {
        self.partnerDomains.contains(domain) || (self.wantsWildcardRing && wildcardAllowed)
    }
}
