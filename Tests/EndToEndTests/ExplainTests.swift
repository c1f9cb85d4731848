// SPDX-License-Identifier: Apache-2.0
import Foundation
import HMXProcessTestSupport
import Testing

extension GatewayEndToEndTests {
    /// `hmx-gateway explain` against the running system: every mapping it calls working
    /// works, and every mapping it calls broken fails with the outcome it predicted, as
    /// the importing gateway counts it (`hmx_import_connections_total{outcome}`).
    @Suite("explain agrees with the running system")
    struct ExplainAgreement {
        /// What explain says of each import, by name: "works", or the outcome the
        /// importing gateway will count ("none" if no connection is made at all).
        static func explain(
            _ lab: GatewayLab,
            _ configs: [String]
        ) async throws -> (
            verdicts: [String: String], status: Int32?, output: String
        ) {
            let run = try await HMXProcessTestSupport.run(
                executablePath("hmx-gateway") ?? "hmx-gateway",
                ["explain", "--json", "--emulator", lab.emulatorConfig] + configs,
                seconds: 30
            )
            let object = try #require(jsonObject(run.output), "\(run.output)")
            let mappings = try #require(object["mappings"] as? [[String: Any]], "\(run.output)")
            var verdicts: [String: String] = [:]
            for mapping in mappings {
                let name = try #require(mapping["import"] as? String)
                verdicts[name] =
                    (mapping["works"] as? Bool) == true ? "works" : (mapping["outcome"] as? String ?? "none")
            }
            return (verdicts, run.status, run.output)
        }

        /// Connects through each import and checks that the importing gateway counts
        /// the predicted outcome (one more connection with it), or that echo works.
        static func confirm(
            _ lab: GatewayLab,
            verdicts: [String: String],
            ports: [String: Int],
            metricsPort: Int
        ) async throws {
            for (name, verdict) in verdicts.sorted(by: { $0.key < $1.key }) {
                let port = try #require(ports[name], "no port for \(name)")
                if verdict != "works" {
                    let outcome = verdict
                    let key = "hmx_import_connections_total{outcome=\"\(outcome)\"}"
                    let before = try await lab.metrics(.alpha, port: metricsPort)[key] ?? 0
                    let result = try await lab.runTool(
                        .alpha,
                        ["refused", "--port", "\(port)", "--timeout", "10"],
                        seconds: 20
                    )
                    let ended = try #require(jsonObject(result.output), "\(result.output)")
                    #expect(ended["bytes"] as? Int == 0, "\(name): \(ended)")
                    let counted = await eventually(within: 10) {
                        ((try? await lab.metrics(.alpha, port: metricsPort)[key]) ?? 0) == before + 1
                    }
                    #expect(counted, "\(name): explain predicted \(outcome); \(lab.gatewayLogs)")
                } else {
                    let probe = try await lab.runTool(
                        .alpha,
                        ["probe", "--port", "\(port)", "--timeout", "15"],
                        seconds: 25
                    )
                    #expect(probe.status == 0, "\(name) should work: \(probe.output)\n\(lab.gatewayLogs)")
                }
            }
        }

        @Test(
            "working, no such service, denied by the allow-list, no gateway there: explained, then seen",
            .timeLimit(.minutes(2))
        )
        func gatewayLayer() async throws {
            let lab = try await GatewayLab(extraDomains: [(3, "gamma")])
            let metricsPort = lab.port(90)
            let ports = [
                "echo": lab.echoPort, "nothing": lab.port(91), "secret": lab.port(92), "elsewhere": lab.port(93),
            ]
            try await lab.startGateways(
                exports: [
                    .init(name: "secret", port: 9007, target: "tcp://127.0.0.1:\(lab.port(94))", allow: ["gamma"])
                ],
                imports: [
                    .init(name: "nothing", listen: "tcp://127.0.0.1:\(ports["nothing"]!)", port: 9100),
                    .init(name: "secret", listen: "tcp://127.0.0.1:\(ports["secret"]!)", port: 9007),
                    .init(name: "elsewhere", listen: "tcp://127.0.0.1:\(ports["elsewhere"]!)", port: 7, peer: "gamma"),
                ],
                betaPeers: ["alpha": 1, "gamma": 3],
                alphaPeers: ["beta": 2, "gamma": 3],
                extra: [.alpha: "metrics:\n  listen: tcp://127.0.0.1:\(metricsPort)\n"]
            )
            let configs = ["\(lab.directory.path)/gateway-alpha.yaml", "\(lab.directory.path)/gateway-beta.yaml"]
            let explained = try await Self.explain(lab, configs)
            #expect(explained.status == 1, "a mapping cannot work: exit 1\n\(explained.output)")
            #expect(
                explained.verdicts == [
                    "echo": "works", "nothing": "no_such_service", "secret": "denied_by_gateway_policy",
                    "elsewhere": "peer_not_running",
                ],
                "\(explained.output)"
            )
            try await Self.confirm(lab, verdicts: explained.verdicts, ports: ports, metricsPort: metricsPort)
        }

        @Test("denied by the hypervisor's policy: explained, then seen", .timeLimit(.minutes(2)))
        func hypervisorLayer() async throws {
            // Answers may flow, requests may not.
            let lab = try await GatewayLab(policy: "  - {action: allow, from: beta, to: alpha}")
            let metricsPort = lab.port(90)
            try await lab.startGateways(
                extra: [.alpha: "metrics:\n  listen: tcp://127.0.0.1:\(metricsPort)\n"],
                waitForEcho: false
            )
            let configs = ["\(lab.directory.path)/gateway-alpha.yaml", "\(lab.directory.path)/gateway-beta.yaml"]
            let explained = try await Self.explain(lab, configs)
            #expect(explained.status == 1, "\(explained.output)")
            #expect(explained.verdicts == ["echo": "denied_by_hypervisor_policy"], "\(explained.output)")
            // The gateways are up once alpha serves its metrics.
            let up = await eventually(within: 20) { (try? await lab.metrics(.alpha, port: metricsPort)) != nil }
            try #require(up, "\(lab.gatewayLogs)")
            try await Self.confirm(
                lab,
                verdicts: explained.verdicts,
                ports: ["echo": lab.echoPort],
                metricsPort: metricsPort
            )
        }

        @Test("a deployment that fits: exit 0 and every mapping works", .timeLimit(.minutes(2)))
        func fits() async throws {
            let lab = try await GatewayLab()
            try await lab.startGateways()
            let configs = ["\(lab.directory.path)/gateway-alpha.yaml", "\(lab.directory.path)/gateway-beta.yaml"]
            let explained = try await Self.explain(lab, configs)
            #expect(explained.status == 0, "\(explained.output)")
            #expect(explained.verdicts == ["echo": "works"], "\(explained.output)")
        }
    }
}
