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

        @Test("on Xen, domains from xenstore (as in dom0); a wildcard ring needs mac-permissive=1")
        func xenstore() async throws {
            let directory = try TemporaryDirectory()
            // xenstore-list and xenstore-read as dom0 has them, for domains 0, 5 and 7.
            let list = try directory.write("xenstore-list", "#!/bin/sh\n[ \"$1\" = /local/domain ] && echo '0\n5\n7'\n")
            let read = try directory.write(
                "xenstore-read",
                "#!/bin/sh\ncase $1 in /local/domain/0/name) echo Domain-0;; /local/domain/5/name) echo web;; "
                    + "/local/domain/7/name) echo db;; *) exit 1;; esac\n"
            )
            for tool in [list, read] { chmod(tool, 0o755) }
            let web = try directory.write(
                "web.yaml",
                """
                link: {xen: true}
                peers: {db: 7}
                imports:
                  - {name: postgres, listen: "tcp://127.0.0.1:5432", peer: db, port: 5432}
                """
            )
            let db = try directory.write(
                "db.yaml",
                """
                link: {xen: true}
                exports:
                  - {name: postgres, port: 5432, target: "tcp://127.0.0.1:5432", allow: [any]}
                """
            )
            func explain(_ bootOption: String) async throws -> (status: Int32?, output: String) {
                let child = try ChildProcess(
                    "hmx-gateway",
                    ["explain", "--xen", "--xen-boot-option", bootOption, "--domains", "xenstore", web, "db=\(db)"],
                    environment: [
                        "PATH": "\(directory.path):\(ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin")"
                    ]
                )
                let status = await child.wait(seconds: 30)
                return (status, child.log)
            }
            let strict = try await explain("argo=1")
            #expect(strict.status == 1, "\(strict.output)")
            #expect(
                strict.output.contains(
                    "FAILS  web(5) import postgres tcp://127.0.0.1:5432 -> db(7) port 5432: exporting gateway: db(7) has no ring"
                ),
                "\(strict.output)"
            )
            #expect(
                strict.output.contains("(Xen booted without argo=1,mac-permissive=1) [no_ring]"),
                "\(strict.output)"
            )
            let permissive = try await explain("argo=1,mac-permissive=1")
            #expect(permissive.status == 0, "\(permissive.output)")
            #expect(permissive.output.contains("works  web(5) import postgres"), "\(permissive.output)")
            let off = try await explain("argo=0")
            #expect(off.status == 1 && off.output.contains("argo_off"), "\(off.output)")
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
