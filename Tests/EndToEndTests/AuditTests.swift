// SPDX-License-Identifier: Apache-2.0
import Foundation
import HMXProcessTestSupport
import Testing

extension GatewayEndToEndTests {
    /// The audit records (`audit: FILE`): one JSON line per connection decision and end.
    @Suite("audit records")
    struct Audit {
        /// The records written so far.
        static func records(_ path: String) -> [[String: Any]] {
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return [] }
            return text.split(separator: "\n").compactMap {
                try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
            }
        }

        static func find(_ path: String, _ match: [String: String]) -> [String: Any]? {
            Self.records(path).first { record in
                match.allSatisfy { key, value in "\(record[key] ?? "")" == value }
            }
        }

        @Test(
            "allowed, denied by the allow-list, target refused: records with mapping, direction, peer, port, outcome, bytes, duration",
            .timeLimit(.minutes(2))
        )
        func gatewayDecisions() async throws {
            let lab = try await GatewayLab()
            let alphaAudit = "\(lab.directory.path)/alpha-audit.jsonl"
            let betaAudit = "\(lab.directory.path)/beta-audit.jsonl"
            let secret = lab.port(60)
            let closed = lab.port(61)
            try await lab.startGateways(
                exports: [
                    .init(name: "secret", port: 9007, target: "tcp://127.0.0.1:\(lab.port(62))", allow: ["gamma"]),
                    .init(name: "closed", port: 9008, target: "tcp://127.0.0.1:\(lab.port(63))"),
                ],
                imports: [
                    .init(name: "secret", listen: "tcp://127.0.0.1:\(secret)", port: 9007),
                    .init(name: "closed", listen: "tcp://127.0.0.1:\(closed)", port: 9008),
                ],
                betaPeers: ["alpha": 1, "gamma": 3],
                extra: [.alpha: "audit: \(alphaAudit)\n", .beta: "audit: \(betaAudit)\n"]
            )
            // Allowed: the probe's round trip (6 bytes each way).
            let probe = try await lab.runTool(
                .alpha,
                ["probe", "--port", "\(lab.echoPort)", "--timeout", "10"],
                seconds: 20
            )
            #expect(probe.status == 0, "\(probe.output)")
            for port in [secret, closed] {
                _ = try await lab.runTool(.alpha, ["refused", "--port", "\(port)", "--timeout", "10"], seconds: 20)
            }
            let ended = await eventually(within: 10) {
                Self.find(alphaAudit, ["event": "ended", "mapping": "echo", "outcome": "closed"]) != nil
                    && Self.find(betaAudit, ["event": "ended", "mapping": "echo"]) != nil
                    && Self.find(alphaAudit, ["mapping": "closed", "event": "ended"]) != nil
            }
            #expect(ended, "\(Self.records(alphaAudit))\n\(Self.records(betaAudit))")

            let opened = try #require(Self.find(betaAudit, ["event": "opened", "mapping": "echo"]))
            #expect(opened["direction"] as? String == "export")
            #expect(opened["peer_domain"] as? Int == 1 && opened["peer_name"] as? String == "alpha")
            #expect(opened["service_port"] as? Int == 7 && opened["outcome"] as? String == "opened")
            #expect((opened["time"] as? String)?.hasSuffix("Z") == true, "\(opened)")
            // (The start's own probe may have retried before beta's ring for alpha was
            // there: those attempts ended no_ring and have their records too.)
            let end = try #require(Self.find(alphaAudit, ["event": "ended", "mapping": "echo", "outcome": "closed"]))
            #expect(end["direction"] as? String == "import" && end["peer_name"] as? String == "beta")
            #expect(end["bytes_to_peer"] as? Int == 6 && end["bytes_from_peer"] as? Int == 6, "\(end)")
            #expect(end["outcome"] as? String == "closed", "\(end)")
            #expect((end["duration_ms"] as? Int).map { $0 >= 0 } == true, "\(end)")

            // Denied by beta's allow-list: beta records the decision, alpha the outcome.
            let denied = try #require(
                Self.find(betaAudit, ["event": "refused", "mapping": "secret"]),
                "\(Self.records(betaAudit))"
            )
            #expect(
                denied["outcome"] as? String == "denied_by_gateway_policy" && denied["service_port"] as? Int == 9007
            )
            let deniedEnd = Self.find(
                alphaAudit,
                ["event": "ended", "mapping": "secret", "outcome": "denied_by_gateway_policy"]
            )
            #expect(
                deniedEnd?["reason"] as? String == "denied by the exporting gateway's allow-list",
                "\(String(describing: deniedEnd))"
            )
            // The target refused: both sides.
            #expect(
                Self.find(betaAudit, ["event": "ended", "mapping": "closed", "outcome": "target_refused"]) != nil,
                "\(Self.records(betaAudit))"
            )
            #expect(Self.find(alphaAudit, ["event": "ended", "mapping": "closed", "outcome": "target_refused"]) != nil)
            // No payload: the probe's bytes appear nowhere in the records.
            let text =
                try String(contentsOfFile: alphaAudit, encoding: .utf8)
                + String(contentsOfFile: betaAudit, encoding: .utf8)
            #expect(!text.contains("probe"), "\(text)")
        }

        @Test("denied by the hypervisor: the importing gateway's record", .timeLimit(.minutes(2)))
        func hypervisorDecision() async throws {
            let lab = try await GatewayLab(policy: "  - {action: allow, from: beta, to: alpha}")
            let alphaAudit = "\(lab.directory.path)/alpha-audit.jsonl"
            try await lab.startGateways(extra: [.alpha: "audit: \(alphaAudit)\n"], waitForEcho: false)
            let recorded = await eventually(within: 20) {
                _ = try? await lab.runTool(
                    .alpha,
                    ["refused", "--port", "\(lab.echoPort)", "--timeout", "5"],
                    seconds: 10
                )
                return Self.find(alphaAudit, ["event": "ended", "outcome": "denied_by_hypervisor_policy"]) != nil
            }
            #expect(recorded, "\(Self.records(alphaAudit))\n\(lab.gatewayLogs)")
        }
    }
}
