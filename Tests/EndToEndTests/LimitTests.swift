// SPDX-License-Identifier: Apache-2.0
import Foundation
import HMXProcessTestSupport
import Testing

extension GatewayEndToEndTests {
    /// An import's `max_connections` and `idle_timeout`.
    @Suite("limits")
    struct Limits {
        @Test("max_connections 2: a third client is closed at once, the first two keep working", .timeLimit(.minutes(2)))
        func maxConnections() async throws {
            let lab = try await GatewayLab()
            let limitedPort = lab.port(88)
            try await lab.startGateways(imports: [.init(name: "limited", listen: "tcp://127.0.0.1:\(limitedPort)", port: 7, extra: ["max_connections: 2"])])
            let go = "\(lab.directory.path)/go-limited"
            let held = try lab.tool(.alpha, ["hold", "--port", "\(limitedPort)", "--count", "2", "--go", go, "--timeout", "60"])
            try #require(await eventually(within: 15) { held.output.contains("holding 2") }, "\(held.log)\n\(lab.gatewayLogs)")

            let third = try await lab.runTool(.alpha, ["refused", "--port", "\(limitedPort)", "--timeout", "10"], seconds: 20)
            let outcome = try #require(jsonObject(third.output), "\(third.output)")
            #expect(outcome["bytes"] as? Int == 0, "the third client got no service: \(outcome)")
            #expect(outcome["end"] as? String != "timeout", "the third client was closed: \(outcome)")
            #expect(((outcome["seconds"] as? NSNumber)?.doubleValue ?? 99) < 2, "closed promptly: \(outcome)")

            _ = try lab.directory.write("go-limited", "")
            #expect(await held.wait(seconds: 20) == 0, "the first two: \(held.log)\n\(lab.gatewayLogs)")
            #expect(held.output.contains("ok 2"), "\(held.log)")
            // Once they are gone, the mapping accepts again.
            let probe = try await lab.runTool(.alpha, ["probe", "--port", "\(limitedPort)", "--timeout", "10"], seconds: 20)
            #expect(probe.status == 0, "\(probe.output)\n\(lab.gatewayLogs)")
            #expect(await eventually { lab.gateways[.alpha]?.log.contains("limit_reached") == true }, "the reason is logged: \(lab.gatewayLogs)")
        }

        @Test("idle_timeout 1s: an idle connection is reset within a few seconds, a busy one is not", .timeLimit(.minutes(2)))
        func idleTimeout() async throws {
            let lab = try await GatewayLab()
            let idlePort = lab.port(89)
            try await lab.startGateways(imports: [.init(name: "idle", listen: "tcp://127.0.0.1:\(idlePort)", port: 7, extra: ["idle_timeout: 1s"])])

            // `refused` sends one line, reads the echo, then waits for the end.
            let idle = try await lab.runTool(.alpha, ["refused", "--port", "\(idlePort)", "--timeout", "15"], seconds: 25)
            let outcome = try #require(jsonObject(idle.output), "\(idle.output)")
            #expect(outcome["connected"] as? Bool == true && outcome["bytes"] as? Int == 6, "the echo came back first: \(outcome)")
            #expect(outcome["end"] as? String == "error ConnectionResetError", "reset, not closed or left open: \(outcome)\n\(lab.gatewayLogs)")
            let seconds = (outcome["seconds"] as? NSNumber)?.doubleValue ?? 99
            #expect(seconds >= 0.9 && seconds < 4, "reset after \(seconds) s")

            // A connection that keeps moving bytes outlives the timeout.
            let busy = try await lab.runTool(.alpha, ["stream", "--port", "\(idlePort)", "--timeout", "4"], seconds: 20)
            #expect(busy.status == 3 && busy.output.contains("streaming") && busy.output.contains("timeout after"), "\(busy.output)\n\(lab.gatewayLogs)")
        }
    }
}
