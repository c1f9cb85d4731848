// SPDX-License-Identifier: Apache-2.0
import HMXCore
import HMXStream

/// What ``DeploymentExplainer`` found: one verdict per mapping (an import and the
/// export it reaches), then the findings across layers.
public struct Explanation: Sendable {
    /// The layer that stops a mapping.
    public enum Layer: String, Sendable {
        case deployment
        case importingGateway = "importing gateway"
        case exportingGateway = "exporting gateway"
        case hypervisor
    }

    public struct Mapping: Sendable {
        public var importer: String
        public var importName: String
        public var listen: String
        public var peer: String
        public var port: HMXPort
        /// The export the import reaches, if one is at that port.
        public var export: String?
        public var target: String?
        /// nil: the mapping works.
        public var failure: Failure?

        public var works: Bool { self.failure == nil }
    }

    public struct Failure: Sendable, Equatable {
        public var layer: Layer
        /// What the importing gateway counts a connection of this mapping as
        /// (`hmx_import_connections_total{outcome}`); nil if no connection is made
        /// (a gateway that cannot start).
        public var outcome: ConnectionOutcome?
        public var reason: String
    }

    public struct Finding: Sendable, Equatable {
        public enum Severity: String, Sendable {
            /// Something will not work.
            case error
            /// Works, but one layer says what another does not.
            case warning
        }

        public enum Kind: String, Sendable {
            case gatewayNotPlaced = "gateway_not_placed"
            case argoOff = "argo_off"
            case hypervisorAllowsGatewayRefuses = "hypervisor_allows_gateway_refuses"
            case gatewayAllowsHypervisorDenies = "gateway_allows_hypervisor_denies"
            case unusedExport = "unused_export"
            case importWithoutExporter = "import_without_exporter"
            case domainNameConflict = "domain_name_conflict"
            case portMismatch = "port_mismatch"
            case wildcardNotPermitted = "wildcard_not_permitted"
            case tooManyRings = "too_many_rings"
            case ringMemory = "ring_memory"
            case twoGatewaysOneDomain = "two_gateways_one_domain"
        }

        public var kind: Kind
        public var severity: Severity
        public var message: String
    }

    public var mappings: [Mapping]
    public var findings: [Finding]

    /// True when every mapping works and nothing will fail.
    public var fits: Bool {
        self.mappings.allSatisfy(\.works) && !self.findings.contains { $0.severity == .error }
    }
}

/// Checks a deployment the way its parts will decide at run time: for each import,
/// the path its OPEN takes (the importing gateway's ring, the hypervisor's policy
/// both ways, the exporting gateway's rings, port, export and allow-list), in the
/// order the running system meets them, so that the first obstacle named is the
/// outcome the importing gateway will count. Then the findings across layers.
public struct DeploymentExplainer: Sendable {
    public let deployment: Deployment

    public init(_ deployment: Deployment) {
        self.deployment = deployment
    }

    private var hypervisor: Deployment.Hypervisor { self.deployment.hypervisor }

    public func explain() -> Explanation {
        var findings = self.gatewayFindings()
        let mappings = self.deployment.gateways.flatMap { gateway in
            gateway.config.imports.map { self.mapping(gateway, $0) }
        }
        findings += self.crossLayerFindings(mappings)
        return Explanation(mappings: mappings, findings: findings)
    }

    // MARK: - Mappings

    private func mapping(_ importer: Deployment.Gateway, _ entry: GatewayConfig.Import) -> Explanation.Mapping {
        let hypervisor = self.hypervisor
        let importerName = hypervisor.name(of: importer.domain)
        var mapping = Explanation.Mapping(
            importer: importerName,
            importName: entry.name,
            listen: "\(entry.listen)",
            peer: hypervisor.name(of: entry.peer),
            port: entry.port
        )
        func fail(_ layer: Explanation.Layer, _ outcome: ConnectionOutcome?, _ reason: String) -> Explanation.Mapping {
            var failed = mapping
            failed.failure = .init(layer: layer, outcome: outcome, reason: reason)
            return failed
        }
        let peer = entry.peer
        let port = importer.config.link.port
        // The importing gateway itself must start.
        if let reason = self.cannotStart(importer) {
            return fail(.hypervisor, nil, "\(importerName)'s gateway cannot start: \(reason)")
        }
        guard let peerDomain = hypervisor.domain(peer) else {
            return fail(
                .hypervisor,
                .peerNotRunning,
                "the hypervisor has no domain \(peer) (\(hypervisor.place) lists \(self.domainList))"
            )
        }
        guard let exporter = self.deployment.gateway(of: peer) else {
            return fail(
                .deployment,
                .peerNotRunning,
                "no gateway runs in \(mapping.peer) in this deployment: nothing answers on port \(port) there"
            )
        }
        if let reason = self.cannotStart(exporter) {
            return fail(.hypervisor, .peerNotRunning, "\(mapping.peer)'s gateway cannot start: \(reason)")
        }
        guard hypervisor.allows(importer.domain, peer, port: port) else {
            return fail(
                .hypervisor,
                .deniedByHypervisor,
                "the hypervisor's policy denies \(importerName) -> \(mapping.peer) port \(port) (\(hypervisor.place))"
            )
        }
        guard peerDomain.argo else {
            return fail(.hypervisor, .noRing, "domain \(peerDomain.name) has no Argo (argo: false)")
        }
        guard exporter.config.link.port == port else {
            return fail(
                .deployment,
                .noRing,
                "the gateways disagree on link.port: \(importerName) sends to port \(port), "
                    + "\(mapping.peer)'s rings are at port \(exporter.config.link.port)"
            )
        }
        guard exporter.config.hasRing(for: importer.domain, wildcardAllowed: hypervisor.wildcardRingsAllowed) else {
            let why =
                exporter.config.wantsWildcardRing
                ? "its exports that accept any domain need a wildcard ring, which the hypervisor does not permit "
                    + "(\(self.wildcardSetting))"
                : "no allow-list of \(mapping.peer) names \(importerName) and it imports nothing from it"
            return fail(
                .exportingGateway,
                .noRing,
                "\(mapping.peer) has no ring that takes \(importerName)'s messages: \(why)"
            )
        }
        guard let export = exporter.config.exports.first(where: { $0.port == entry.port }) else {
            let ports = exporter.config.exports.map { "\($0.name) \($0.port)" }.joined(separator: ", ")
            return fail(
                .exportingGateway,
                .noSuchService,
                "\(mapping.peer) exports nothing on port \(entry.port) (its exports: \(ports.isEmpty ? "none" : ports))"
            )
        }
        mapping.export = export.name
        mapping.target = "\(export.target)"
        guard export.target.isDatagram == entry.listen.isDatagram, export.target.isRecords == entry.listen.isRecords
        else {
            func kind(_ endpoint: Endpoint) -> String {
                endpoint.isDatagram ? "a datagram" : endpoint.isRecords ? "a seqpacket" : "a stream"
            }
            let kinds = (kind(entry.listen), kind(export.target))
            return fail(
                .exportingGateway,
                .noSuchService,
                "\(entry.name) is \(kinds.0) import, but \(mapping.peer)'s export \(export.name) on port \(entry.port) is \(kinds.1) export (\(export.target))"
            )
        }
        // A relay's connections are admitted by who its callers on other hosts are
        // (judged per connection): the path is open as far as this gateway goes.
        guard export.allow.permits(importer.domain) || export.relays.contains(importer.domain) else {
            return fail(
                .exportingGateway,
                .deniedByGateway,
                "\(mapping.peer)'s export \(export.name) does not allow \(importerName) (allow: \(self.allowText(export.allow, in: exporter.config)))"
            )
        }
        guard hypervisor.allows(peer, importer.domain, port: port) else {
            if entry.listen.isDatagram {
                // The datagrams arrive; no reply can.
                return fail(
                    .hypervisor,
                    .deniedByHypervisor,
                    "the hypervisor's policy denies the replies \(mapping.peer) -> \(importerName) port \(port) (\(hypervisor.place)): "
                        + "datagrams reach \(export.target), their replies are dropped"
                )
            }
            // The OPEN arrives; the answer cannot: the connection waits for its
            // open_timeout and ends as a lost peer.
            return fail(
                .hypervisor,
                .peerLost,
                "the hypervisor's policy denies the answers \(mapping.peer) -> \(importerName) port \(port) (\(hypervisor.place)): "
                    + "connections wait for open_timeout (\(entry.openTimeoutMilliseconds / 1000) s), then end"
            )
        }
        return mapping
    }

    /// Why a gateway cannot attach or register its rings, if it cannot.
    private func cannotStart(_ gateway: Deployment.Gateway) -> String? {
        guard self.hypervisor.argoEnabled else {
            return "Argo is off in the hypervisor (\(self.argoSetting))"
        }
        guard let domain = self.hypervisor.domain(gateway.domain) else {
            return "the hypervisor has no domain \(gateway.domain)"
        }
        guard domain.argo else { return "domain \(domain.name) has no Argo (argo: false)" }
        let rings = gateway.config.ringCount
        if rings > ArgoABI.maximumRingsPerDomain {
            return "it needs \(rings) rings, more than the \(ArgoABI.maximumRingsPerDomain) Argo allows a domain"
        }
        if let maximum = domain.maximumMemory {
            let memory = GatewayService.emulatorMemoryBytes(for: gateway.config)
            if memory > maximum {
                return "it brings \(memory >> 20) MiB of memory for its rings and staging, "
                    + "more than the \(maximum >> 20) MiB domain \(domain.name) may have (max_memory_mib)"
            }
        }
        return nil
    }

    // MARK: - Findings

    /// Findings about each gateway on its own and about how the gateways sit in the
    /// hypervisor's domains.
    private func gatewayFindings() -> [Explanation.Finding] {
        var findings: [Explanation.Finding] = []
        for (config, reason) in self.deployment.unplaced {
            findings.append(.init(kind: .gatewayNotPlaced, severity: .error, message: "\(config.file): \(reason)"))
        }
        if !self.hypervisor.argoEnabled {
            findings.append(
                .init(kind: .argoOff, severity: .error, message: "Argo is off in the hypervisor (\(self.argoSetting))")
            )
        }
        var seen: [DomainID: String] = [:]
        for gateway in self.deployment.gateways {
            let name = self.hypervisor.name(of: gateway.domain)
            if let first = seen[gateway.domain] {
                findings.append(
                    .init(
                        kind: .twoGatewaysOneDomain,
                        severity: .error,
                        message: "\(first) and \(gateway.config.file) both attach as \(name): one will be refused"
                    )
                )
            }
            seen[gateway.domain] = gateway.config.file
            findings += Self.singleGatewayFindings(
                gateway.config,
                wildcardAllowed: self.hypervisor.wildcardRingsAllowed
            )
            if let domain = self.hypervisor.domain(gateway.domain), let maximum = domain.maximumMemory {
                let memory = GatewayService.emulatorMemoryBytes(for: gateway.config)
                if memory > maximum {
                    findings.append(
                        .init(
                            kind: .ringMemory,
                            severity: .error,
                            message:
                                "\(gateway.config.file): the gateway brings \(memory >> 20) MiB (\(gateway.config.ringCount) rings of "
                                + "\(gateway.config.link.ringSize) bytes, room to register each twice, and staging), more than "
                                + "the \(maximum >> 20) MiB that domain \(domain.name) may have: raise max_memory_mib or lower link.ring_size"
                        )
                    )
                }
            }
            // Names: the gateway's peers against the hypervisor's names.
            for (peerName, id) in gateway.config.peers.sorted(by: { $0.key < $1.key }) {
                if let domain = self.hypervisor.domain(id), domain.name != peerName {
                    findings.append(
                        .init(
                            kind: .domainNameConflict,
                            severity: .warning,
                            message:
                                "\(gateway.config.file) calls domain \(id) \"\(peerName)\", the hypervisor calls it \"\(domain.name)\""
                        )
                    )
                } else if let named = self.hypervisor.domains.first(where: { $0.name == peerName }), named.id != id {
                    findings.append(
                        .init(
                            kind: .domainNameConflict,
                            severity: .warning,
                            message:
                                "\(gateway.config.file) says \"\(peerName)\" is domain \(id), the hypervisor says it is \(named.id)"
                        )
                    )
                }
            }
        }
        // Two gateways that mean different domains by one name.
        let gateways = self.deployment.gateways
        for (index, first) in gateways.enumerated() {
            for second in gateways[(index + 1)...] {
                for (peerName, id) in first.config.peers.sorted(by: { $0.key < $1.key }) {
                    if let other = second.config.peers[peerName], other != id {
                        findings.append(
                            .init(
                                kind: .domainNameConflict,
                                severity: .warning,
                                message:
                                    "\(first.config.file) says \"\(peerName)\" is domain \(id), \(second.config.file) says \(other)"
                            )
                        )
                    }
                }
            }
        }
        return findings
    }

    /// What one gateway's file shows on its own (``GatewayConfig`` `check-config`
    /// prints these too): rings past Argo's limit, a wildcard ring the hypervisor may
    /// not permit.
    public static func singleGatewayFindings(_ config: GatewayConfig, wildcardAllowed: Bool?) -> [Explanation.Finding] {
        var findings: [Explanation.Finding] = []
        let rings = config.ringCount
        if rings > ArgoABI.maximumRingsPerDomain {
            findings.append(
                .init(
                    kind: .tooManyRings,
                    severity: .error,
                    message:
                        "\(config.file): the gateway needs \(rings) rings (one per partner domain\(config.wantsWildcardRing ? " and the wildcard ring" : "")), "
                        + "more than the \(ArgoABI.maximumRingsPerDomain) Argo allows a domain: use allow: any (one wildcard ring) for wide exports"
                )
            )
        }
        if config.wantsWildcardRing, wildcardAllowed != true {
            let names = config.exports.filter { $0.allow == .any }.map(\.name).joined(separator: ", ")
            let text =
                "\(config.file): exports [\(names)] accept any domain and need a wildcard ring, which needs "
                + "mac_permissive: true (emulator) or argo=1,mac-permissive=1 (Xen)"
            findings.append(
                .init(
                    kind: .wildcardNotPermitted,
                    severity: wildcardAllowed == false ? .error : .warning,
                    message: wildcardAllowed == false ? text + ", which this hypervisor does not set" : text
                )
            )
        }
        return findings
    }

    private func crossLayerFindings(_ mappings: [Explanation.Mapping]) -> [Explanation.Finding] {
        var findings: [Explanation.Finding] = []
        let hypervisor = self.hypervisor
        for mapping in mappings
        where mapping.failure?.layer == .deployment && mapping.failure?.outcome == .peerNotRunning {
            findings.append(
                .init(
                    kind: .importWithoutExporter,
                    severity: .error,
                    message:
                        "import \(mapping.importName) of \(mapping.importer) reaches for \(mapping.peer), where no gateway runs"
                )
            )
        }
        for exporter in self.deployment.gateways {
            let exporterName = hypervisor.name(of: exporter.domain)
            let port = exporter.config.link.port
            for export in exporter.config.exports {
                // Unused: no import in this deployment reaches it.
                let used = mappings.contains { $0.peer == exporterName && $0.port == export.port }
                if !used {
                    findings.append(
                        .init(
                            kind: .unusedExport,
                            severity: .warning,
                            message:
                                "export \(export.name) of \(exporterName) (port \(export.port)): no import in this deployment reaches it"
                        )
                    )
                }
                // Open in the gateway, closed in the hypervisor.
                let allowed: [DomainID]
                switch export.allow {
                case .any: allowed = hypervisor.domains.map(\.id).filter { $0 != exporter.domain }
                case .domains(let set): allowed = set.union(export.relays).sorted()
                }
                let denied = allowed.filter { !hypervisor.allows($0, exporter.domain, port: port) }
                if !denied.isEmpty {
                    findings.append(
                        .init(
                            kind: .gatewayAllowsHypervisorDenies,
                            severity: .warning,
                            message:
                                "export \(export.name) of \(exporterName) allows \(Self.list(denied.map { hypervisor.name(of: $0) })), "
                                + "but the hypervisor denies \(denied.count == 1 ? "it" : "them") sending to \(exporterName) port \(port)"
                        )
                    )
                }
            }
            // Open in the hypervisor, closed in every export (a door open in one layer only).
            for source in hypervisor.domains where source.id != exporter.domain {
                guard hypervisor.policy != nil, hypervisor.allows(source.id, exporter.domain, port: port) else {
                    continue
                }
                // Used by an export that allows the source, or by the answers to an
                // import of this gateway from the source.
                let used =
                    exporter.config.exports.contains { $0.allow.permits(source.id) || $0.relays.contains(source.id) }
                    || exporter.config.imports.contains { $0.peer == source.id }
                if !used {
                    findings.append(
                        .init(
                            kind: .hypervisorAllowsGatewayRefuses,
                            severity: .warning,
                            message:
                                "the hypervisor lets \(hypervisor.name(of: source.id)) send to \(exporterName) port \(port), "
                                + "but no export of \(exporterName) allows it and \(exporterName) imports nothing from it"
                        )
                    )
                }
            }
        }
        // Gateways that disagree on the protocol port.
        let ports = Set(self.deployment.gateways.map(\.config.link.port))
        if ports.count > 1 {
            let byPort = self.deployment.gateways.map { "\(hypervisor.name(of: $0.domain)) \($0.config.link.port)" }
            findings.append(
                .init(
                    kind: .portMismatch,
                    severity: .error,
                    message:
                        "the gateways use different link.port values (\(byPort.joined(separator: ", "))): they cannot reach each other"
                )
            )
        }
        return findings
    }

    // MARK: - Words

    /// Names, the first eight of them and how many more.
    static func list(_ names: [String]) -> String {
        names.count <= 8
            ? names.joined(separator: ", ") : names.prefix(8).joined(separator: ", ") + " and \(names.count - 8) more"
    }

    private var domainList: String {
        self.hypervisor.domains.map { "\($0.name)(\($0.id))" }.joined(separator: ", ")
    }

    private var argoSetting: String {
        switch self.hypervisor.kind {
        case .emulator(let file): "argo: false in \(file)"
        case .xen: "boot Xen with argo=1"
        }
    }

    private var wildcardSetting: String {
        switch self.hypervisor.kind {
        case .emulator(let file): "mac_permissive: false in \(file)"
        case .xen: "Xen booted without argo=1,mac-permissive=1"
        }
    }

    private func allowText(_ allow: GatewayConfig.Allow, in config: GatewayConfig) -> String {
        switch allow {
        case .any: "any"
        case .domains(let set): set.sorted().map { self.hypervisor.name(of: $0) }.joined(separator: ", ")
        }
    }
}
