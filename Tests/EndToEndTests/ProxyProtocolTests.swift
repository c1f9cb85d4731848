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
    }
}
