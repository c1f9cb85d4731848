// SPDX-License-Identifier: Apache-2.0
import Foundation
import HMXProcessTestSupport
import Testing

extension GatewayEndToEndTests {
    /// SIGHUP re-reads the configuration file without disturbing open connections.
    @Suite("reload")
    struct Reload {
        @Test(
            "SIGHUP adds a mapping while a connection stays open; a bad file is rejected and the running mappings kept",
            .timeLimit(.minutes(3))
        )
        func sighup() async throws {
            let lab = try await GatewayLab()
            let addedPort = lab.port(86)
            let neverPort = lab.port(87)
            try await lab.startGateways()
            let added = (
                export: GatewayLab.Export(name: "added", port: 17, target: "tcp://127.0.0.1:\(lab.echoTarget)"),
                import: GatewayLab.Import(name: "added", listen: "tcp://127.0.0.1:\(addedPort)", port: 17)
            )
            let go = "\(lab.directory.path)/go-after-reload"
            let held = try lab.tool(
                .alpha,
                ["hold", "--port", "\(lab.echoPort)", "--count", "1", "--go", go, "--timeout", "90"]
            )
            try #require(
                await eventually(within: 15) { held.output.contains("holding 1") },
                "\(held.log)\n\(lab.gatewayLogs)"
            )
            let before = try await lab.runTool(
                .alpha,
                ["refused", "--port", "\(addedPort)", "--timeout", "5"],
                seconds: 15
            )
            #expect(
                jsonObject(before.output)?["end"] as? String == "refused",
                "nothing listens there yet: \(before.output)"
            )

            let alpha = try #require(lab.gateways[.alpha])
            let beta = try #require(lab.gateways[.beta])
            _ = try lab.gatewayConfig(.beta, exports: [lab.echoExport, added.export], imports: [])
            beta.signal(SIGHUP)
            #expect(await eventually(within: 10) { beta.log.contains("configuration reloaded") }, "\(beta.log)")
            _ = try lab.gatewayConfig(.alpha, exports: [], imports: [lab.echoImport, added.import])
            alpha.signal(SIGHUP)
            #expect(await eventually(within: 10) { alpha.log.contains("configuration reloaded") }, "\(alpha.log)")

            let probe = try await lab.runTool(
                .alpha,
                ["probe", "--port", "\(addedPort)", "--timeout", "20"],
                seconds: 30
            )
            #expect(probe.status == 0, "the added mapping: \(probe.output)\n\(lab.gatewayLogs)")
            _ = try lab.directory.write("go-after-reload", "")
            #expect(
                await held.wait(seconds: 20) == 0,
                "the connection opened before the reload: \(held.log)\n\(lab.gatewayLogs)"
            )
            #expect(held.output.contains("ok 1"), "\(held.log)")

            // A file with an error: rejected as a whole (it would also have dropped the
            // added import and listened on neverPort), the running mappings keep going.
            let go2 = "\(lab.directory.path)/go-after-bad-reload"
            let held2 = try lab.tool(
                .alpha,
                ["hold", "--port", "\(addedPort)", "--count", "1", "--go", go2, "--timeout", "90"]
            )
            try #require(await eventually(within: 15) { held2.output.contains("holding 1") }, "\(held2.log)")
            _ = try lab.gatewayConfig(
                .alpha,
                exports: [],
                imports: [
                    lab.echoImport,
                    .init(
                        name: "never",
                        listen: "tcp://127.0.0.1:\(neverPort)",
                        port: 17,
                        extra: ["idle_timeout: soon"]
                    ),
                ]
            )
            alpha.signal(SIGHUP)
            #expect(await eventually(within: 10) { alpha.log.contains("reload rejected") }, "\(alpha.log)")
            _ = try lab.gatewayConfig(
                .beta,
                exports: [lab.echoExport, .init(name: "added", port: 17, target: "gopher://127.0.0.1:70")],
                imports: []
            )
            beta.signal(SIGHUP)
            #expect(await eventually(within: 10) { beta.log.contains("reload rejected") }, "\(beta.log)")
            #expect(alpha.isRunning && beta.isRunning)

            for port in [lab.echoPort, addedPort] {
                let again = try await lab.runTool(
                    .alpha,
                    ["probe", "--port", "\(port)", "--timeout", "10"],
                    seconds: 20
                )
                #expect(
                    again.status == 0,
                    "port \(port) after the rejected reload: \(again.output)\n\(lab.gatewayLogs)"
                )
            }
            let never = try await lab.runTool(
                .alpha,
                ["refused", "--port", "\(neverPort)", "--timeout", "5"],
                seconds: 15
            )
            #expect(
                jsonObject(never.output)?["end"] as? String == "refused",
                "the rejected file's listener: \(never.output)"
            )
            _ = try lab.directory.write("go-after-bad-reload", "")
            #expect(
                await held2.wait(seconds: 20) == 0,
                "the connection open across the rejected reload: \(held2.log)\n\(lab.gatewayLogs)"
            )
            #expect(await lab.stopGateways() == [], "\(lab.gatewayLogs)")
        }
    }
}
