// SPDX-License-Identifier: Apache-2.0
import Foundation
import HMXProcessTestSupport
import Testing

extension GatewayEndToEndTests {
    /// Failures are seen promptly, on both ends, with their reason logged.
    @Suite("faults and policy")
    struct Faults {
        /// An echo server in beta exported to alpha, and a client in alpha streaming
        /// through it (data flowing both ways); uses lab ports 70 and 71.
        static func streaming(_ lab: GatewayLab) async throws -> (server: ChildProcess, client: ChildProcess) {
            let target = lab.port(70)
            let importPort = lab.port(71)
            let server = try await lab.startToolServer(.beta, ["echo-server", "--port", "\(target)"])
            try await lab.startGateways(
                exports: [.init(name: "stream", port: 9006, target: "tcp://127.0.0.1:\(target)")],
                imports: [.init(name: "stream", listen: "tcp://127.0.0.1:\(importPort)", port: 9006)]
            )
            let client = try lab.tool(.alpha, ["stream", "--port", "\(importPort)", "--timeout", "90"])
            let streaming = await eventually(within: 30) { client.output.contains("streaming") }
            try #require(streaming, "no data flowing: \(client.log)\n\(lab.gatewayLogs)")
            return (server, client)
        }

        @Test("the peer gateway killed mid-stream: both applications see the end within 5 s", .timeLimit(.minutes(3)))
        func peerKilled() async throws {
            let lab = try await GatewayLab()
            let (server, client) = try await Self.streaming(lab)

            let beta = try #require(lab.gateways[.beta])
            beta.signal(SIGKILL)
            let killed = Date()
            let clientEnded = await client.wait(seconds: 5)
            #expect(clientEnded == 0, "alpha's client did not see the end within 5 s: \(client.log)")
            #expect(client.output.contains("ended"), "\(client.log)")
            #expect(
                await eventually(within: max(0.1, 5 - Date().timeIntervalSince(killed))) {
                    server.output.contains("closed")
                },
                "beta's server: \(server.log)"
            )
            #expect(lab.gateways[.alpha]?.isRunning == true, "alpha's gateway survives its peer")

            // A restarted peer is usable again.
            let config = "\(lab.directory.path)/gateway-beta.yaml"
            let restarted = try lab.startGateway(.beta, config: config)
            let probe = try await lab.runTool(
                .alpha,
                ["probe", "--port", "\(lab.echoPort)", "--timeout", "30"],
                seconds: 40
            )
            #expect(
                probe.status == 0,
                "after the peer restarted: \(probe.output)\n\(restarted.log)\n\(lab.gatewayLogs)"
            )
        }

        @Test(
            "the emulator killed mid-stream: both applications see the end within 5 s, both gateways stop with status 1 and say why",
            .timeLimit(.minutes(2))
        )
        func emulatorKilled() async throws {
            let lab = try await GatewayLab()
            let (server, client) = try await Self.streaming(lab)

            // The hypervisor is gone: no gateway can move a byte any more. Both end their
            // connections and exit (for a service manager to restart them once it is back).
            lab.emulator.signal(SIGKILL)
            let killed = Date()
            #expect(await client.wait(seconds: 5) == 0, "alpha's client did not see the end within 5 s: \(client.log)")
            #expect(client.output.contains("ended"), "\(client.log)")
            #expect(
                await eventually(within: max(0.1, 5 - Date().timeIntervalSince(killed))) {
                    server.output.contains("closed")
                },
                "beta's server: \(server.log)"
            )
            for domain in GatewayLab.Domain.allCases {
                let gateway = try #require(lab.gateways[domain])
                #expect(await gateway.wait(seconds: 5) == 1, "\(domain)'s gateway: \(gateway.log)")
                #expect(gateway.log.contains("lost the hypervisor link"), "\(domain)'s gateway: \(gateway.log)")
            }
        }

        @Test(
            "a peer gateway restarted while idle is reachable again (our ring for it went with its domain)",
            .timeLimit(.minutes(2))
        )
        func idlePeerRestart() async throws {
            let lab = try await GatewayLab()
            try await lab.startGateways()
            // Let the probe's connection finish on both sides: from now on alpha is idle.
            try await Task.sleep(for: .seconds(2))
            let beta = try #require(lab.gateways[.beta])
            beta.signal(SIGKILL)
            #expect(await beta.wait(seconds: 10) != nil)
            // alpha sends nothing meanwhile, so it cannot have seen beta's domain go.
            let restarted = try lab.startGateway(.beta, config: "\(lab.directory.path)/gateway-beta.yaml")
            // The new run is up before alpha sends anything: alpha's first OPEN then
            // reaches it, and only alpha's missing ring stands in the way (a probe sent
            // earlier would find no domain at all: ESRCH, another path).
            try #require(await eventually(within: 20) { restarted.log.contains("gateway ready") }, "\(restarted.log)")
            let probe = try await lab.runTool(
                .alpha,
                ["probe", "--port", "\(lab.echoPort)", "--timeout", "30"],
                seconds: 40
            )
            #expect(
                probe.status == 0,
                "after the peer restarted: \(probe.output)\n\(restarted.log)\n\(lab.gatewayLogs)"
            )
            #expect(
                await eventually { lab.gateways[.alpha]?.log.contains("registered it again") == true },
                "\(lab.gatewayLogs)"
            )
        }

        @Test(
            "the export's allow-list refuses another domain promptly, with the reason logged",
            .timeLimit(.minutes(2))
        )
        func gatewayPolicyDenies() async throws {
            let lab = try await GatewayLab()
            let target = lab.port(80)
            let importPort = lab.port(81)
            let server = try await lab.startToolServer(.beta, ["echo-server", "--port", "\(target)"])
            try await lab.startGateways(
                exports: [.init(name: "secret", port: 9007, target: "tcp://127.0.0.1:\(target)", allow: ["gamma"])],
                imports: [.init(name: "secret", listen: "tcp://127.0.0.1:\(importPort)", port: 9007)],
                betaPeers: ["alpha": 1, "gamma": 3]
            )
            let result = try await lab.runTool(
                .alpha,
                ["refused", "--port", "\(importPort)", "--timeout", "10"],
                seconds: 20
            )
            let outcome = try #require(jsonObject(result.output), "\(result.output)")
            #expect(outcome["bytes"] as? Int == 0, "\(outcome)")
            #expect(outcome["end"] as? String != "timeout", "\(outcome)")
            #expect(((outcome["seconds"] as? NSNumber)?.doubleValue ?? 99) < 5, "refused promptly: \(outcome)")
            #expect(!server.output.contains("closed"), "the target was never connected: \(server.output)")
            // One line in beta's log names the export, the peer and the reason.
            let logged = await eventually {
                lab.gateways[.beta]!.log.split(separator: "\n").contains {
                    $0.contains("connection refused") && $0.contains("mapping=secret") && $0.contains("peer=alpha(1)")
                        && $0.contains("allow-list")
                }
            }
            #expect(logged, "\(lab.gatewayLogs)")
            // The allowed mapping next to it still works.
            let probe = try await lab.runTool(
                .alpha,
                ["probe", "--port", "\(lab.echoPort)", "--timeout", "10"],
                seconds: 20
            )
            #expect(probe.status == 0, "\(probe.output)")
        }

        @Test(
            "an export allowing any domain without wildcard rings: the log names it and mac-permissive; named peers still reach it",
            .timeLimit(.minutes(2))
        )
        func wildcardRingRefused() async throws {
            // The lab's emulator refuses wildcard rings (like Xen without mac-permissive=1).
            let lab = try await GatewayLab()
            let importPort = lab.port(85)
            try await lab.startGateways(
                exports: [
                    .init(name: "public", port: 9009, target: "tcp://127.0.0.1:\(lab.echoTarget)", allow: ["any"])
                ],
                imports: [.init(name: "public", listen: "tcp://127.0.0.1:\(importPort)", port: 9009)]
            )
            let beta = try #require(lab.gateways[.beta])
            let reported = await eventually { beta.log.contains("refused the wildcard ring") }
            #expect(reported, "\(lab.gatewayLogs)")
            #expect(beta.log.contains("exports [public]"), "names the export: \(beta.log)")
            #expect(beta.log.contains("argo=1,mac-permissive=1"), "names Xen's boot option: \(beta.log)")
            #expect(beta.isRunning, "the gateway keeps running")
            // alpha has a partner ring with beta (the echo export names it), so it reaches
            // the export that allows any domain.
            let probe = try await lab.runTool(
                .alpha,
                ["probe", "--port", "\(importPort)", "--timeout", "20"],
                seconds: 30
            )
            #expect(probe.status == 0, "\(probe.output)\n\(lab.gatewayLogs)")
        }

        @Test("the hypervisor policy refuses alpha -> beta promptly, with the reason logged", .timeLimit(.minutes(2)))
        func hypervisorPolicyDenies() async throws {
            let lab = try await GatewayLab(policy: "  - {action: allow, from: beta, to: alpha}")
            try await lab.startGateways(waitForEcho: false)
            // Both gateways attached (else alpha's first connection finds beta not running).
            let ready = await eventually(within: 30) {
                GatewayLab.Domain.allCases.allSatisfy { lab.gateways[$0]?.log.contains("gateway ready") == true }
            }
            try #require(ready, "the gateways did not start: \(lab.gatewayLogs)")
            // Wait for alpha's listener; the HMX connection behind it must be refused.
            var outcome: [String: Any] = [:]
            let listening = await eventually(within: 30) {
                guard
                    let result = try? await lab.runTool(
                        .alpha,
                        ["refused", "--port", "\(lab.echoPort)", "--timeout", "10"],
                        seconds: 20
                    ),
                    let object = jsonObject(result.output)
                else { return false }
                outcome = object
                return object["connected"] as? Bool == true
            }
            try #require(listening, "alpha's gateway never listened: \(outcome)\n\(lab.gatewayLogs)")
            #expect(outcome["bytes"] as? Int == 0, "\(outcome)")
            #expect(outcome["end"] as? String != "timeout", "\(outcome)")
            #expect(((outcome["seconds"] as? NSNumber)?.doubleValue ?? 99) < 5, "refused promptly: \(outcome)")
            #expect(
                await eventually { lab.gateways[.alpha]?.log.lowercased().contains("denied") == true },
                "\(lab.gatewayLogs)"
            )
            #expect(lab.emulator.errorOutput.contains("denied by emulator policy"))
        }
    }

    @Suite("check-config")
    struct CheckConfig {
        @Test("prints the mappings of a good file; a bad key is one line FILE:LINE: KEY: REASON, status 2")
        func checkConfig() async throws {
            try #require(executablePath("hmx-gateway") != nil, "hmx-gateway is not built in \(binDirectory)")
            let directory = try TemporaryDirectory()
            let good = try directory.write(
                "good.yaml",
                """
                link:
                  emulator: \(directory.path)/alpha.sock
                peers:
                  beta: 2
                imports:
                  - name: redis
                    listen: tcp://127.0.0.1:16379
                    peer: beta
                    port: 6379

                """
            )
            let accepted = try await run("hmx-gateway", ["check-config", good])
            #expect(accepted.status == 0, "\(accepted.output)")
            #expect(accepted.output.contains("redis") && accepted.output.contains("16379"), "\(accepted.output)")

            let bad = try directory.write("bad.yaml", "link:\n  emulator: /tmp/x.sock\n  colour: red\n")
            let rejected = try ChildProcess("hmx-gateway", ["check-config", bad])
            #expect(await rejected.wait(seconds: 20) == 2)
            let lines = rejected.errorOutput.split(separator: "\n")
            #expect(lines.count == 1, "\(rejected.errorOutput)")
            #expect(
                lines.first?.contains("\(bad):3: ") == true && lines.first?.contains("colour") == true,
                "\(rejected.errorOutput)"
            )
        }
    }
}
