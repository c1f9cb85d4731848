// SPDX-License-Identifier: Apache-2.0
import Foundation
import HMXProcessTestSupport
import Testing

extension GatewayEndToEndTests {
    /// An import's `max_connections` and `idle_timeout`.
    @Suite("limits")
    struct Limits {
        @Test(
            "max_connections 2: a third client is closed at once, the first two keep working",
            .timeLimit(.minutes(2))
        )
        func maxConnections() async throws {
            let lab = try await GatewayLab()
            let limitedPort = lab.port(88)
            try await lab.startGateways(imports: [
                .init(name: "limited", listen: "tcp://127.0.0.1:\(limitedPort)", port: 7, extra: ["max_connections: 2"])
            ])
            let go = "\(lab.directory.path)/go-limited"
            let held = try lab.tool(
                .alpha,
                ["hold", "--port", "\(limitedPort)", "--count", "2", "--go", go, "--timeout", "60"]
            )
            try #require(
                await eventually(within: 15) { held.output.contains("holding 2") },
                "\(held.log)\n\(lab.gatewayLogs)"
            )

            let third = try await lab.runTool(
                .alpha,
                ["refused", "--port", "\(limitedPort)", "--timeout", "10"],
                seconds: 20
            )
            let outcome = try #require(jsonObject(third.output), "\(third.output)")
            #expect(outcome["bytes"] as? Int == 0, "the third client got no service: \(outcome)")
            #expect(outcome["end"] as? String != "timeout", "the third client was closed: \(outcome)")
            #expect(((outcome["seconds"] as? NSNumber)?.doubleValue ?? 99) < 2, "closed promptly: \(outcome)")

            _ = try lab.directory.write("go-limited", "")
            #expect(await held.wait(seconds: 20) == 0, "the first two: \(held.log)\n\(lab.gatewayLogs)")
            #expect(held.output.contains("ok 2"), "\(held.log)")
            // Once they are gone, the mapping accepts again.
            let probe = try await lab.runTool(
                .alpha,
                ["probe", "--port", "\(limitedPort)", "--timeout", "10"],
                seconds: 20
            )
            #expect(probe.status == 0, "\(probe.output)\n\(lab.gatewayLogs)")
            #expect(
                await eventually { lab.gateways[.alpha]?.log.contains("limit_reached") == true },
                "the reason is logged: \(lab.gatewayLogs)"
            )
        }

        @Test(
            "idle_timeout 1s: an idle connection is reset within a few seconds, a busy one is not",
            .timeLimit(.minutes(2))
        )
        func idleTimeout() async throws {
            let lab = try await GatewayLab()
            let idlePort = lab.port(89)
            try await lab.startGateways(imports: [
                .init(name: "idle", listen: "tcp://127.0.0.1:\(idlePort)", port: 7, extra: ["idle_timeout: 1s"])
            ])

            // `refused` sends one line, reads the echo, then waits for the end.
            let idle = try await lab.runTool(
                .alpha,
                ["refused", "--port", "\(idlePort)", "--timeout", "15"],
                seconds: 25
            )
            let outcome = try #require(jsonObject(idle.output), "\(idle.output)")
            #expect(
                outcome["connected"] as? Bool == true && outcome["bytes"] as? Int == 6,
                "the echo came back first: \(outcome)"
            )
            #expect(
                outcome["end"] as? String == "error ConnectionResetError",
                "reset, not closed or left open: \(outcome)\n\(lab.gatewayLogs)"
            )
            let seconds = (outcome["seconds"] as? NSNumber)?.doubleValue ?? 99
            #expect(seconds >= 0.9 && seconds < 4, "reset after \(seconds) s")

            // A connection that keeps moving bytes outlives the timeout.
            let busy = try await lab.runTool(
                .alpha,
                ["stream", "--port", "\(idlePort)", "--timeout", "4"],
                seconds: 20
            )
            #expect(
                busy.status == 3 && busy.output.contains("streaming") && busy.output.contains("timeout after"),
                "\(busy.output)\n\(lab.gatewayLogs)"
            )
        }

        @Test(
            "out of file descriptors: the import listener pauses instead of spinning, says so once, and serves the waiting clients later",
            .timeLimit(.minutes(2))
        )
        func acceptBackoff() async throws {
            let lab = try await GatewayLab()
            let metricsPort = lab.port(90)
            try await lab.startToolServer(.beta, ["echo-server", "--port", "\(lab.echoTarget)"])
            try lab.startGateway(.beta, config: try lab.gatewayConfig(.beta, exports: [lab.echoExport], imports: []))
            let alpha = try lab.startGateway(
                .alpha,
                config: try lab.gatewayConfig(
                    .alpha,
                    exports: [],
                    imports: [lab.echoImport],
                    extra: "metrics:\n  listen: tcp://127.0.0.1:\(metricsPort)\n"
                ),
                fileLimit: 64
            )
            let probe = try await lab.runTool(
                .alpha,
                ["probe", "--port", "\(lab.echoPort)", "--timeout", "30"],
                seconds: 40
            )
            try #require(probe.status == 0, "\(probe.output)\n\(lab.gatewayLogs)")
            // Thirty clients fit in 64 descriptors; twenty more do not, until the first leave.
            let first = try lab.tool(
                .alpha,
                [
                    "hold", "--port", "\(lab.echoPort)", "--count", "30", "--go", "\(lab.directory.path)/go-1",
                    "--timeout", "60",
                ]
            )
            try #require(
                await eventually(within: 20) { first.output.contains("holding 30") },
                "\(first.log)\n\(lab.gatewayLogs)"
            )
            let second = try lab.tool(
                .alpha,
                [
                    "hold", "--port", "\(lab.echoPort)", "--count", "20", "--go", "\(lab.directory.path)/go-2",
                    "--timeout", "60", "--wait", "40",
                ]
            )
            try #require(
                await eventually(within: 10) { alpha.log.contains("out of file descriptors") },
                "\(lab.gatewayLogs)"
            )
            // The clients that fit are served; then only the waiting ones are left.
            try await Task.sleep(for: .seconds(1))
            let before = alpha.cpuSeconds() ?? 0
            try await Task.sleep(for: .seconds(2))
            let used = (alpha.cpuSeconds() ?? 99) - before
            let profile = try await HMXProcessTestSupport.run(
                "timeout",
                ["-s", "INT", "2", "strace", "-c", "-f", "-p", "\(alpha.pid)", "-o", "/tmp/emfile.strace"],
                seconds: 10
            )
            print("PERF", profile.output)
            #expect(
                used < 0.5,
                "the gateway used \(used) CPU-s in 2 s while out of descriptors (a spinning accept loop uses 2)"
            )
            let lines = alpha.log.components(separatedBy: "out of file descriptors").count - 1
            #expect(lines >= 1 && lines <= 2, "said once (at most once per 10 s): \(lines) lines")
            // The first clients leave; the waiting ones are served.
            _ = try lab.directory.write("go-1", "")
            #expect(await first.wait(seconds: 20) == 0, "\(first.log)")
            #expect(
                await eventually(within: 20) { second.output.contains("holding 20") },
                "\(second.log)\n\(lab.gatewayLogs)"
            )
            _ = try lab.directory.write("go-2", "")
            #expect(await second.wait(seconds: 20) == 0, "\(second.log)")
            let metrics = try await lab.metrics(.alpha, port: metricsPort)
            #expect((metrics["hmx_accept_pauses_total"] ?? 0) > 0, "\(metrics)")
        }
    }
}
