// SPDX-License-Identifier: Apache-2.0
import Foundation
import HMXProcessTestSupport
import Testing

extension GatewayEndToEndTests {
    /// The health endpoints on the metrics listener, as an orchestrator polls them.
    @Suite("health: /healthz, /readyz, /status")
    struct Health {
        /// GET `path` on alpha's metrics listener: the HTTP status and the body.
        static func get(_ lab: GatewayLab, port: Int, _ path: String) async throws -> (status: Int, body: String) {
            let script = """
                import sys, urllib.request, urllib.error
                try:
                    response = urllib.request.urlopen('http://127.0.0.1:\(port)\(path)', timeout=10)
                    print(response.status); print(response.read().decode(), end='')
                except urllib.error.HTTPError as error:
                    print(error.code); print(error.read().decode(), end='')
                """
            let result = try await lab.run(.alpha, "python3", ["-c", script])
            // Not a recorded issue: callers poll until the listener is there.
            guard result.status == 0 else { throw CocoaError(.fileReadUnknown, userInfo: ["output": result.output]) }
            let lines = result.output.split(separator: "\n", maxSplits: 1, omittingEmptySubsequences: false)
            return (Int(lines.first ?? "") ?? 0, lines.count > 1 ? String(lines[1]) : "")
        }

        @Test("503 with the reasons while the peer is not up, 200 once it is; /status lists peers and imports")
        func readiness() async throws {
            let lab = try await GatewayLab()
            let metricsPort = lab.port(95)
            // alpha first: beta's domain is not running, so alpha's ring for it cannot exist.
            let alphaConfig = try lab.gatewayConfig(
                .alpha,
                exports: [],
                imports: [lab.echoImport],
                extra: "metrics:\n  listen: tcp://127.0.0.1:\(metricsPort)\n"
            )
            try lab.startGateway(.alpha, config: alphaConfig)
            let answering = await eventually(within: 20) {
                (try? await Self.get(lab, port: metricsPort, "/healthz"))?.status == 200
            }
            try #require(answering, "\(lab.gatewayLogs)")
            let waiting = try await Self.get(lab, port: metricsPort, "/readyz")
            #expect(waiting.status == 503, "\(waiting)")
            #expect(waiting.body.contains("no ring registered for peer beta(2)"), "\(waiting.body)")

            // beta comes up: alpha registers its ring, binds its listener, and is ready.
            try await lab.startToolServer(.beta, ["echo-server", "--port", "\(lab.echoTarget)"])
            try lab.startGateway(.beta, config: try lab.gatewayConfig(.beta, exports: [lab.echoExport], imports: []))
            let ready = await eventually(within: 30) {
                (try? await Self.get(lab, port: metricsPort, "/readyz"))?.status == 200
            }
            #expect(ready, "\(lab.gatewayLogs)")
            #expect(try await Self.get(lab, port: metricsPort, "/readyz").body == "ready\n")

            let status = try await Self.get(lab, port: metricsPort, "/status")
            #expect(status.status == 200)
            let object = try #require(
                try JSONSerialization.jsonObject(with: Data(status.body.utf8)) as? [String: Any],
                "\(status.body)"
            )
            #expect(object["ready"] as? Bool == true)
            #expect(object["link_up"] as? Bool == true)
            let peers = try #require(object["peers"] as? [[String: Any]])
            #expect(
                peers.count == 1 && peers[0]["name"] as? String == "beta(2)"
                    && peers[0]["ring_registered"] as? Bool == true
            )
            let imports = try #require(object["imports"] as? [[String: Any]])
            #expect(
                imports.count == 1 && imports[0]["name"] as? String == "echo" && imports[0]["bound"] as? Bool == true
            )
            #expect(try await Self.get(lab, port: metricsPort, "/nowhere").status == 404)

            // Draining: not ready any more while an open connection finishes.
            let stream = try lab.tool(.alpha, ["stream", "--port", "\(lab.echoPort)"])
            let streaming = await eventually(within: 20) { stream.output.contains("streaming") }
            try #require(streaming, "\(stream.log)\n\(lab.gatewayLogs)")
            lab.gateways[.alpha]!.signal(SIGTERM)
            let draining = await eventually(within: 10) {
                let answer = try? await Self.get(lab, port: metricsPort, "/readyz")
                return answer?.status == 503 && answer?.body.contains("shutting down") == true
            }
            #expect(draining, "\(lab.gatewayLogs)")
        }
    }
}
