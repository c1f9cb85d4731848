// SPDX-License-Identifier: Apache-2.0
import HMXCore
import HMXEmulator
import HMXGateway
import HMXStream
import Testing

/// One small deployment per finding: alpha(1) imports beta(2)'s redis; gamma(3) is a
/// third domain without a gateway. Each case changes one thing and names exactly the
/// verdict and findings `explain` must give.
@Suite("explain: every mapping and every finding across gateways and the hypervisor")
struct ExplainTests {
    struct Case: CustomTestStringConvertible, Sendable {
        var name: String
        var emulator = ExplainTests.emulator()
        var alpha = ExplainTests.alpha()
        var beta: String? = ExplainTests.beta()
        var extra: [String] = []
        /// The mapping's verdict: nil works, else (layer, outcome, words of the reason).
        var failure: (Explanation.Layer, ConnectionOutcome?, String)?
        /// Every finding: kind, severity, words of the message.
        var findings: [(Explanation.Finding.Kind, Explanation.Finding.Severity, String)] = []

        var testDescription: String { self.name }
    }

    static func emulator(
        argo: Bool = true,
        wildcard: Bool = false,
        betaMemory: String = "",
        policy: String = """
          - {action: allow, from: alpha, to: beta, port: 4747}
          - {action: allow, from: beta, to: alpha, port: 4747}
        """
    ) -> String {
        """
        argo: \(argo)
        mac_permissive: \(wildcard)
        domains:
          - {id: 1, name: alpha, socket: /run/a.sock}
          - {id: 2, name: beta, socket: /run/b.sock\(betaMemory)}
          - {id: 3, name: gamma, socket: /run/c.sock}
        policy:
        \(policy)
        """
    }

    static func alpha(peers: String = "{beta: 2}", peer: String = "beta", port: Int = 6379) -> String {
        """
        link: {emulator: /run/a.sock}
        peers: \(peers)
        imports:
          - {name: redis, listen: "tcp://127.0.0.1:16379", peer: \(peer), port: \(port)}
        """
    }

    static func beta(
        allow: String = "[alpha]",
        linkPort: Int = 4747,
        peers: String = "{alpha: 1, gamma: 3}",
        more: String = "",
        socket: String = "/run/b.sock"
    ) -> String {
        """
        link: {emulator: \(socket), port: \(linkPort)}
        peers: \(peers)
        exports:
          - {name: redis, port: 6379, target: "tcp://127.0.0.1:6380", allow: \(allow)}
        \(more)
        """
    }

    static let cases: [Case] = [
        Case(name: "everything fits"),
        // Its callers from other hosts are judged per connection: open as far as beta goes.
        Case(
            name: "the importer relays callers from other hosts",
            beta: beta(allow: "[\"web@netvm-a.example\"], relays: [alpha]")
        ),
        Case(
            name: "a datagram import of a stream export",
            alpha: """
                link: {emulator: /run/a.sock}
                peers: {beta: 2}
                imports:
                  - {name: redis, listen: "udp://127.0.0.1:16379", peer: beta, port: 6379}
                """,
            failure: (
                .exportingGateway, .noSuchService,
                "redis is a datagram import, but beta(2)'s export redis on port 6379 is a stream export (tcp://127.0.0.1:6380)"
            )
        ),
        Case(
            name: "an import names a port nobody exports",
            alpha: alpha(port: 5432),
            failure: (
                .exportingGateway, .noSuchService, "beta(2) exports nothing on port 5432 (its exports: redis 6379)"
            ),
            findings: [(.unusedExport, .warning, "export redis of beta(2) (port 6379)")]
        ),
        Case(
            name: "the export's allow-list leaves the importer out (beta has a ring for it)",
            beta: beta(
                allow: "[gamma]",
                more: "  - {name: other, port: 7000, target: \"tcp://127.0.0.1:7000\", allow: [alpha]}"
            ),
            failure: (.exportingGateway, .deniedByGateway, "export redis does not allow alpha(1) (allow: gamma(3))"),
            findings: [
                (.unusedExport, .warning, "export other of beta(2)"),
                (
                    .gatewayAllowsHypervisorDenies, .warning,
                    "export redis of beta(2) allows gamma(3), but the hypervisor denies it"
                ),
            ]
        ),
        Case(
            name: "no ring of the exporter takes the importer's messages",
            beta: beta(allow: "[gamma]"),
            failure: (
                .exportingGateway, .noRing, "no allow-list of beta(2) names alpha(1) and it imports nothing from it"
            ),
            findings: [
                (.gatewayAllowsHypervisorDenies, .warning, "allows gamma(3), but the hypervisor denies it"),
                (.hypervisorAllowsGatewayRefuses, .warning, "lets alpha(1) send to beta(2) port 4747, but no export"),
            ]
        ),
        Case(
            name: "an export for any domain needs a wildcard ring the hypervisor does not permit",
            beta: beta(allow: "[any]", peers: "{}"),
            failure: (
                .exportingGateway, .noRing,
                "need a wildcard ring, which the hypervisor does not permit (mac_permissive: false in emulator.yaml)"
            ),
            findings: [
                (.wildcardNotPermitted, .error, "exports [redis] accept any domain and need a wildcard ring"),
                (.gatewayAllowsHypervisorDenies, .warning, "allows gamma(3), but the hypervisor denies it"),
            ]
        ),
        Case(
            name: "an export for any domain with wildcard rings permitted",
            emulator: emulator(wildcard: true),
            beta: beta(allow: "[any]", peers: "{}"),
            findings: [(.gatewayAllowsHypervisorDenies, .warning, "allows gamma(3), but the hypervisor denies it")]
        ),
        Case(
            name: "the hypervisor denies the importer's messages",
            emulator: emulator(policy: "  - {action: allow, from: beta, to: alpha, port: 4747}"),
            failure: (.hypervisor, .deniedByHypervisor, "policy denies alpha(1) -> beta(2) port 4747 (emulator.yaml)"),
            findings: [
                (
                    .gatewayAllowsHypervisorDenies, .warning,
                    "export redis of beta(2) allows alpha(1), but the hypervisor denies it"
                )
            ]
        ),
        Case(
            name: "the hypervisor denies the answers",
            emulator: emulator(policy: "  - {action: allow, from: alpha, to: beta, port: 4747}"),
            failure: (
                .hypervisor, .peerLost,
                "denies the answers beta(2) -> alpha(1) port 4747 (emulator.yaml): connections wait for open_timeout (30 s), then end"
            )
        ),
        Case(
            name: "an import reaches for a domain where no gateway runs",
            alpha: alpha(peers: "{gamma: 3}", peer: "gamma"),
            failure: (.deployment, .peerNotRunning, "no gateway runs in gamma(3) in this deployment"),
            findings: [
                (.importWithoutExporter, .error, "import redis of alpha(1) reaches for gamma(3)"),
                (.unusedExport, .warning, "export redis of beta(2)"),
                (
                    .hypervisorAllowsGatewayRefuses, .warning,
                    "lets beta(2) send to alpha(1) port 4747, but no export of alpha(1) allows it and alpha(1) imports nothing from it"
                ),
            ]
        ),
        Case(
            name: "an import names a domain the hypervisor does not have",
            alpha: alpha(peers: "{beta: 2}", peer: "9"),
            failure: (.hypervisor, .peerNotRunning, "the hypervisor has no domain 9"),
            findings: [
                (.unusedExport, .warning, "export redis of beta(2)"),
                (.hypervisorAllowsGatewayRefuses, .warning, "lets beta(2) send to alpha(1) port 4747"),
            ]
        ),
        Case(
            name: "the gateways disagree on the protocol port",
            beta: beta(linkPort: 4748),
            failure: (.deployment, .noRing, "alpha(1) sends to port 4747, beta(2)'s rings are at port 4748"),
            findings: [
                (
                    .gatewayAllowsHypervisorDenies, .warning,
                    "allows alpha(1), but the hypervisor denies it sending to beta(2) port 4748"
                ),
                (.portMismatch, .error, "different link.port values (alpha(1) 4747, beta(2) 4748)"),
            ]
        ),
        Case(
            name: "a gateway's name for a domain is not the hypervisor's",
            alpha: alpha(peers: "{db: 2}", peer: "db"),
            findings: [
                (.domainNameConflict, .warning, "a.yaml calls domain 2 \"db\", the hypervisor calls it \"beta\"")
            ]
        ),
        Case(
            name: "two gateways mean different domains by one name",
            alpha: alpha(peers: "{beta: 2, gamma: 3}"),
            beta: beta(peers: "{alpha: 1, gamma: 4}"),
            findings: [
                (.domainNameConflict, .warning, "b.yaml says \"gamma\" is domain 4, the hypervisor says it is 3"),
                (.domainNameConflict, .warning, "a.yaml says \"gamma\" is domain 3, b.yaml says 4"),
            ]
        ),
        Case(
            name: "the hypervisor lets a domain in that no export accepts",
            emulator: emulator(
                policy: """
                      - {action: allow, from: alpha, to: beta, port: 4747}
                      - {action: allow, from: beta, to: alpha, port: 4747}
                      - {action: allow, from: gamma, to: beta}
                    """
            ),
            findings: [
                (
                    .hypervisorAllowsGatewayRefuses, .warning,
                    "lets gamma(3) send to beta(2) port 4747, but no export of beta(2) allows it"
                )
            ]
        ),
        Case(
            name: "more rings than Argo allows a domain",
            beta: beta(allow: "[" + (10...140).map(String.init).joined(separator: ", ") + ", alpha]"),
            failure: (.hypervisor, .peerNotRunning, "it needs 132 rings, more than the 128 Argo allows a domain"),
            findings: [
                (.tooManyRings, .error, "b.yaml: the gateway needs 132 rings"),
                (.gatewayAllowsHypervisorDenies, .warning, "allows 10, 11, 12, 13, 14, 15, 16, 17 and 123 more, but"),
            ]
        ),
        Case(
            name: "ring memory beyond the domain's reservation",
            emulator: emulator(betaMemory: ", max_memory_mib: 16"),
            failure: (.hypervisor, .peerNotRunning, "more than the 16 MiB domain beta may have (max_memory_mib)"),
            findings: [(.ringMemory, .error, "more than the 16 MiB that domain beta may have")]
        ),
        Case(
            name: "Argo is off in the hypervisor",
            emulator: emulator(argo: false),
            failure: (
                .hypervisor, nil,
                "alpha(1)'s gateway cannot start: Argo is off in the hypervisor (argo: false in emulator.yaml)"
            ),
            findings: [(.argoOff, .error, "Argo is off")]
        ),
        Case(
            name: "a gateway whose link names no domain's socket",
            beta: beta(socket: "/run/elsewhere.sock"),
            failure: (.deployment, .peerNotRunning, "no gateway runs in beta(2)"),
            findings: [
                (
                    .gatewayNotPlaced, .error,
                    "b.yaml: link.emulator /run/elsewhere.sock is not the socket of any domain in emulator.yaml"
                ),
                (.importWithoutExporter, .error, "reaches for beta(2)"),
            ]
        ),
        Case(
            name: "two gateways attach as one domain",
            extra: [beta()],
            findings: [(.twoGatewaysOneDomain, .error, "b.yaml and b2.yaml both attach as beta(2)")]
        ),
    ]

    @Test("each small deployment gets exactly its verdict and findings", arguments: Self.cases)
    func explain(_ scenario: Case) throws {
        let emulator = try EmulatorConfig.parse(scenario.emulator, file: "emulator.yaml")
        var gateways = [try GatewayConfig.parse(scenario.alpha, file: "a.yaml")]
        if let beta = scenario.beta { gateways.append(try GatewayConfig.parse(beta, file: "b.yaml")) }
        for (index, text) in scenario.extra.enumerated() {
            gateways.append(try GatewayConfig.parse(text, file: "b\(index + 2).yaml"))
        }
        let explanation = DeploymentExplainer(.onEmulator(emulator, gateways: gateways)).explain()
        let lines = explanation.textLines.joined(separator: "\n")

        try #require(explanation.mappings.count == 1, "\(lines)")
        let mapping = explanation.mappings[0]
        if let (layer, outcome, words) = scenario.failure {
            let failure = try #require(mapping.failure, "\(lines)")
            #expect(failure.layer == layer, "\(lines)")
            #expect(failure.outcome == outcome, "\(lines)")
            #expect(failure.reason.contains(words), "\(failure.reason)")
        } else {
            #expect(mapping.works, "\(lines)")
            #expect(mapping.export == "redis" && mapping.target == "tcp://127.0.0.1:6380")
        }
        #expect(explanation.findings.count == scenario.findings.count, "\(lines)")
        for (kind, severity, words) in scenario.findings {
            #expect(
                explanation.findings.contains {
                    $0.kind == kind && $0.severity == severity && $0.message.contains(words)
                },
                "missing \(kind) \(severity) '\(words)' in:\n\(lines)"
            )
        }
        let errors = scenario.findings.contains { $0.1 == .error }
        #expect(explanation.fits == (scenario.failure == nil && !errors))
    }

    @Test("the JSON form carries the same verdicts, escaped")
    func json() throws {
        let emulator = try EmulatorConfig.parse(Self.emulator(), file: "emu \"1\".yaml")
        let gateways = [
            try GatewayConfig.parse(Self.alpha(port: 5432), file: "a.yaml"),
            try GatewayConfig.parse(Self.beta(), file: "b.yaml"),
        ]
        let json = DeploymentExplainer(.onEmulator(emulator, gateways: gateways)).explain().json
        #expect(json.hasPrefix(#"{"fits":false,"mappings":[{"importer":"alpha(1)","import":"redis""#))
        #expect(json.contains(#""works":false,"layer":"exporting gateway","outcome":"no_such_service""#))
        #expect(json.contains(#""kind":"unused_export","severity":"warning""#))
    }

    @Test("check-config's single-file findings: rings past the limit, a wildcard ring")
    func singleFile() throws {
        let config = try GatewayConfig.parse(Self.beta(allow: "[any]", peers: "{}"), file: "b.yaml")
        let findings = DeploymentExplainer.singleGatewayFindings(config, wildcardAllowed: nil)
        #expect(findings.map(\.kind) == [.wildcardNotPermitted])
        #expect(findings.first?.severity == .warning)
        let many = try GatewayConfig.parse(
            Self.beta(allow: "[" + (10...140).map(String.init).joined(separator: ", ") + "]"),
            file: "b.yaml"
        )
        #expect(DeploymentExplainer.singleGatewayFindings(many, wildcardAllowed: nil).map(\.kind) == [.tooManyRings])
    }

    @Test("on Xen without a policy: a wildcard ring needs mac-permissive; names come from the domains file")
    func xen() throws {
        let gateways = [
            Deployment.Gateway(config: try GatewayConfig.parse(Self.alpha(), file: "a.yaml"), domain: DomainID(1)),
            Deployment.Gateway(
                config: try GatewayConfig.parse(Self.beta(allow: "[any]", peers: "{}"), file: "b.yaml"),
                domain: DomainID(2)
            ),
        ]
        let domains = [
            Deployment.Domain(id: DomainID(1), name: "alpha"), Deployment.Domain(id: DomainID(2), name: "beta"),
        ]
        func explain(wildcard: Bool) -> Explanation {
            let hypervisor = Deployment.Hypervisor(
                kind: .xen,
                argoEnabled: true,
                wildcardRingsAllowed: wildcard,
                domains: domains,
                policy: nil
            )
            return DeploymentExplainer(Deployment(gateways: gateways, hypervisor: hypervisor)).explain()
        }
        let strict = explain(wildcard: false)
        #expect(strict.mappings.first?.failure?.outcome == .noRing)
        #expect(strict.mappings.first?.failure?.reason.contains("Xen booted without argo=1,mac-permissive=1") == true)
        let permissive = explain(wildcard: true)
        #expect(permissive.fits, "\(permissive.textLines)")
    }
}
