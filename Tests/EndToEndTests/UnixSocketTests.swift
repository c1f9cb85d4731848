// SPDX-License-Identifier: Apache-2.0
import Foundation
import HMXProcessTestSupport
import Testing

extension GatewayEndToEndTests {
    /// `unix:/PATH` on both ends: an import listening on a Unix socket, an export dialling one.
    @Suite("Unix socket endpoints")
    struct UnixSockets {
        @Test(
            "an import on unix:/PATH reaches a socat UNIX-LISTEN echo behind an export's unix: target",
            .timeLimit(.minutes(2))
        )
        func unixEndpoints() async throws {
            let lab = try await GatewayLab()
            let path = lab.directory.path
            let targetSocket = "\(path)/target.sock"
            let importSocket = "\(path)/import.sock"
            let server = try lab.shell(.beta, "exec socat UNIX-LISTEN:\(targetSocket),fork EXEC:cat")
            try #require(
                await eventually(within: 10) { FileManager.default.fileExists(atPath: targetSocket) },
                "socat: \(server.log)"
            )
            try await lab.startGateways(
                exports: [.init(name: "unix-echo", port: 9012, target: "unix:\(targetSocket)")],
                imports: [.init(name: "unix-echo", listen: "unix:\(importSocket)", port: 9012)]
            )
            try #require(
                await eventually(within: 10) { FileManager.default.fileExists(atPath: importSocket) },
                "\(lab.gatewayLogs)"
            )
            for (index, bytes) in [1, 65_537, 3 << 20].enumerated() {
                let client = try lab.shell(
                    .alpha,
                    """
                    set -e
                    head -c \(bytes) /dev/urandom > \(path)/unix-\(index).sent
                    socat -t 30 - UNIX-CONNECT:\(importSocket) < \(path)/unix-\(index).sent > \(path)/unix-\(index).received
                    cmp \(path)/unix-\(index).sent \(path)/unix-\(index).received
                    echo same
                    """
                )
                #expect(await client.wait(seconds: 60) == 0, "\(bytes) bytes: \(client.log)\n\(lab.gatewayLogs)")
                #expect(client.output == "same\n", "\(bytes) bytes: \(client.log)")
            }
            #expect(server.isRunning, "\(server.log)")
        }
    }
}
