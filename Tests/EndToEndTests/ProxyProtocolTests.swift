// SPDX-License-Identifier: Apache-2.0
import Foundation
import HMXProcessTestSupport
import Testing

extension GatewayEndToEndTests {
    /// An export with `proxy_protocol: v2` tells its target which domain connected.
    @Suite("PROXY protocol v2")
    struct ProxyProtocol {
        @Test(
            "the target reads source 100.64.0.1 and domain id 1 (alpha, as stamped), then the client's bytes unchanged",
            .timeLimit(.minutes(2))
        )
        func proxyV2() async throws {
            let lab = try await GatewayLab()
            let target = lab.port(84)
            let importPort = lab.port(85)
            let server = try await lab.startToolServer(.beta, ["proxy-echo-server", "--port", "\(target)"])
            try await lab.startGateways(
                exports: [
                    .init(
                        name: "proxied",
                        port: 9010,
                        target: "tcp://127.0.0.1:\(target)",
                        extra: ["proxy_protocol: v2"]
                    )
                ],
                imports: [.init(name: "proxied", listen: "tcp://127.0.0.1:\(importPort)", port: 9010)]
            )
            for bytes in [1 << 20, 1] {
                let result = try await lab.runTool(
                    .alpha,
                    ["proxy-check", "--port", "\(importPort)", "--bytes", "\(bytes)"],
                    seconds: 60
                )
                let header = try #require(
                    jsonObject(result.output),
                    "\(result.output)\n\(server.log)\n\(lab.gatewayLogs)"
                )
                #expect(header["error"] == nil, "\(header)")
                #expect(header["family"] as? Int == 0x11, "TCP over IPv4: \(header)")
                #expect(header["source"] as? String == "100.64.0.1", "\(header)")
                #expect(header["domain_id"] as? Int == GatewayLab.Domain.alpha.id, "\(header)")
                #expect(header["domain_name"] as? String == "alpha", "\(header)")
                #expect(
                    header["destination"] as? String == "127.0.0.1" && header["destination_port"] as? Int == target,
                    "\(header)"
                )
                #expect(
                    header["payload_ok"] as? Bool == true && header["echoed"] as? Int == bytes,
                    "\(bytes) bytes after the header: \(header)"
                )
                #expect(result.status == 0, "\(result.output)")
            }
            #expect(
                server.output.components(separatedBy: "header ").count - 1 == 2,
                "one header per connection: \(server.output)"
            )
            #expect(!server.output.contains("bad header"), "\(server.output)")
        }

        /// A server that speaks first once it has the PROXY header (as SSH or SMTP behind
        /// HAProxy's accept-proxy): its greeting names the domain.
        static let greeter = """
            import socket, sys
            server = socket.socket(); server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind(('127.0.0.1', int(sys.argv[1]))); server.listen(4); print('listening', flush=True)
            while True:
                connection, _ = server.accept(); connection.settimeout(10)
                header = b''
                try:
                    while len(header) < 16 or len(header) < 16 + int.from_bytes(header[14:16], 'big'):
                        chunk = connection.recv(1)
                        if not chunk: break
                        header += chunk
                except OSError:
                    pass
                connection.sendall(b'220 hello domain %d\\r\\n' % header[28 + 3 + 1] if len(header) > 32 else b'no header\\r\\n')
                connection.close()
            """

        @Test(
            "the header goes out at once: a server that speaks first greets a client that has sent nothing",
            .timeLimit(.minutes(2))
        )
        func serverSpeaksFirst() async throws {
            let lab = try await GatewayLab()
            let target = lab.port(86)
            let importPort = lab.port(87)
            let server = try lab.spawn(.beta, "python3", ["-u", "-c", Self.greeter, "\(target)"])
            let listening = await eventually(within: 10) { server.output.contains("listening") }
            try #require(listening, "\(server.log)")
            try await lab.startGateways(
                exports: [
                    .init(
                        name: "greeter",
                        port: 9011,
                        target: "tcp://127.0.0.1:\(target)",
                        extra: ["proxy_protocol: v2"]
                    )
                ],
                imports: [.init(name: "greeter", listen: "tcp://127.0.0.1:\(importPort)", port: 9011)]
            )
            // The client only reads.
            let client = """
                import socket
                s = socket.create_connection(('127.0.0.1', \(importPort)), timeout=10)
                print(s.recv(100).decode().strip())
                """
            let result = try await lab.run(.alpha, "python3", ["-c", client], seconds: 30)
            #expect(result.output.contains("220 hello domain 1"), "\(result.output)\n\(lab.gatewayLogs)")
        }
    }
}
