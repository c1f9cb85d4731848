// SPDX-License-Identifier: Apache-2.0
import Foundation
import HMXProcessTestSupport
import Testing

extension GatewayEndToEndTests {
    /// `hmx-gateway status` and `hmx-emulator status`: what a person asks first when
    /// something does not connect, over each daemon's control socket.
    @Suite("status: the control sockets")
    struct Status {
        static func object(_ text: String) throws -> [String: Any] {
            try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any], "\(text)")
        }

        static func mapping(_ status: [String: Any], _ kind: String, _ name: String) throws -> [String: Any] {
            let mappings = try #require(status["mappings"] as? [[String: Any]], "\(status)")
            return try #require(
                mappings.first { $0["kind"] as? String == kind && $0["name"] as? String == name },
                "\(mappings)"
            )
        }

        @Test("not ready before the peer, then each mapping's connections, bytes and outcomes; the emulator's rings")
        func status() async throws {
            let lab = try await GatewayLab()
            let alphaControl = "\(lab.directory.path)/alpha.control"
            let betaControl = "\(lab.directory.path)/beta.control"
            // An import of a service beta does not export: its connections are refused.
            let missing = GatewayLab.Import(name: "missing", listen: "tcp://127.0.0.1:\(lab.port(2))", port: 9)
            let alphaConfig = try lab.gatewayConfig(
                .alpha,
                exports: [],
                imports: [lab.echoImport, missing],
                extra: "control_socket: \(alphaControl)\n"
            )
            try lab.startGateway(.alpha, config: alphaConfig)
            let listening = await eventually(within: 20) { FileManager.default.fileExists(atPath: alphaControl) }
            try #require(listening, "\(lab.gatewayLogs)")

            // Only the owner may connect.
            var info = stat()
            #expect(
                lstat(alphaControl, &info) == 0 && info.st_mode & 0o777 == 0o600 && info.st_mode & S_IFMT == S_IFSOCK
            )

            // beta's domain is not running: not ready (exit 1), and the reason.
            let early = try await lab.run(.alpha, "hmx-gateway", ["status", "--config", alphaConfig])
            #expect(early.status == 1, "\(early.output)")
            #expect(early.output.contains("NOT READY"), "\(early.output)")
            #expect(early.output.contains("not ready: no ring registered for peer beta(2)"), "\(early.output)")
            #expect(early.output.contains("import echo: tcp://127.0.0.1:\(lab.echoPort) -> beta(2) port 7"))

            try await lab.startToolServer(.beta, ["echo-server", "--port", "\(lab.echoTarget)"])
            let betaConfig = try lab.gatewayConfig(
                .beta,
                exports: [lab.echoExport],
                imports: [],
                extra: "control_socket: \(betaControl)\n"
            )
            try lab.startGateway(.beta, config: betaConfig)
            let ready = await eventually(within: 30) {
                (try? await lab.run(.alpha, "hmx-gateway", ["status", "--socket", alphaControl]))?.status == 0
            }
            try #require(ready, "\(lab.gatewayLogs)")

            // A stream that stays open, and a refused connection.
            let stream = try lab.tool(.alpha, ["stream", "--port", "\(lab.echoPort)"])
            let streaming = await eventually(within: 20) { stream.output.contains("streaming") }
            try #require(streaming, "\(stream.log)\n\(lab.gatewayLogs)")
            let refused = try await lab.runTool(.alpha, ["refused", "--port", "\(lab.port(2))"])
            #expect(refused.status == 0, "\(refused.output)")

            let alpha = try await lab.run(.alpha, "hmx-gateway", ["status", "--socket", alphaControl, "--json"])
            #expect(alpha.status == 0, "\(alpha.output)")
            let alphaStatus = try Self.object(alpha.output)
            #expect((alphaStatus["health"] as? [String: Any])?["ready"] as? Bool == true)
            let peers = try #require(alphaStatus["peers"] as? [[String: Any]])
            #expect(peers.count == 1, "\(peers)")
            #expect(peers.first?["name"] as? String == "beta" && peers.first?["ring"] as? String == "registered")
            #expect((peers.first?["message_size"] as? Int ?? 0) > 0, "\(peers)")
            let echo = try Self.mapping(alphaStatus, "import", "echo")
            #expect(echo["active_connections"] as? Int == 1, "\(echo)")
            #expect(echo["opened"] as? Int == 1, "\(echo)")
            #expect(echo["listening"] as? Bool == true)
            #expect(echo["bytes_to_peer"] as? Int ?? 0 >= 1 << 20, "\(echo)")
            #expect(echo["bytes_from_peer"] as? Int ?? 0 >= 1 << 20, "\(echo)")
            let refusedImport = try Self.mapping(alphaStatus, "import", "missing")
            #expect(refusedImport["opened"] as? Int == 0, "\(refusedImport)")
            #expect(refusedImport["outcomes"] as? [String: Int] == ["no_such_service": 1], "\(refusedImport)")
            let windows = try #require(alphaStatus["windows"] as? [String: Any])
            #expect(windows["pool"] as? Int ?? 0 > 0 && windows["pool_in_use"] is Int, "\(windows)")

            let beta = try await lab.run(.beta, "hmx-gateway", ["status", "--config", betaConfig, "--json"])
            let betaStatus = try Self.object(beta.output)
            let export = try Self.mapping(betaStatus, "export", "echo")
            #expect(export["active_connections"] as? Int == 1, "\(export)")
            #expect(export["peers"] as? [String] == ["alpha(1)"], "\(export)")
            #expect(betaStatus["refused_before_export"] as? [String: Int] == ["no_such_service": 1], "\(betaStatus)")

            // The same for a person.
            let text = try await lab.run(.alpha, "hmx-gateway", ["status", "--config", alphaConfig])
            #expect(text.status == 0, "\(text.output)")
            #expect(text.output.contains(", ready, "), "\(text.output)")
            #expect(text.output.contains("beta (domain 2): ring registered"), "\(text.output)")
            #expect(text.output.contains("connections 1/"), "\(text.output)")
            #expect(text.output.contains("no_such_service 1"), "\(text.output)")

            // The emulator: both domains attached, each with its ring for the other.
            let emulator = try await HMXProcessTestSupport.run(
                executablePath("hmx-emulator") ?? "hmx-emulator",
                ["status", "--config", lab.emulatorConfig, "--json"],
                seconds: 20
            )
            #expect(emulator.status == 0, "\(emulator.output)")
            let emulatorStatus = try Self.object(emulator.output)
            let domains = try #require(emulatorStatus["domains"] as? [[String: Any]])
            #expect(domains.map { $0["name"] as? String } == ["alpha", "beta"], "\(domains)")
            #expect(domains.allSatisfy { $0["attached"] as? Bool == true }, "\(domains)")
            let alphaRings = try #require(domains.first?["rings"] as? [[String: Any]])
            #expect(alphaRings.contains { $0["port"] as? Int == 4747 && $0["partner"] as? Int == 2 }, "\(alphaRings)")

            // Bounded requests: an unknown one and an endless line get an error.
            let probe = """
                import socket, sys
                for request in (b'show everything\\n', b'x' * 5000):
                    s = socket.socket(socket.AF_UNIX); s.settimeout(10); s.connect(sys.argv[1])
                    s.sendall(request); answer = b''
                    while chunk := s.recv(4096): answer += chunk
                    print(answer.decode().strip())
                """
            let bad = try await lab.run(.alpha, "python3", ["-c", probe, alphaControl])
            #expect(bad.output.contains("error: unknown request 'show everything'"), "\(bad.output)")
            #expect(bad.output.contains("error: request longer than 256 bytes"), "\(bad.output)")

            // Gone with the gateway: no answer (exit 2), and the socket is removed.
            stream.killGroup()
            lab.gateways[.alpha]!.signal(SIGTERM)
            _ = await lab.gateways[.alpha]!.wait(seconds: 20)
            #expect(!FileManager.default.fileExists(atPath: alphaControl))
            let gone = try await lab.run(.alpha, "hmx-gateway", ["status", "--socket", alphaControl])
            #expect(gone.status == 2, "\(gone.output)")
            #expect(gone.output.contains("cannot ask the hmx-gateway at \(alphaControl)"), "\(gone.output)")
        }
    }
}
