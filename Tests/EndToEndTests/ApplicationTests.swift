// SPDX-License-Identifier: Apache-2.0
import Foundation
import HMXProcessTestSupport
import Testing

extension GatewayEndToEndTests {
    /// Programs from Debian, unmodified, talking through an import/export pair.
    @Suite("unmodified applications")
    struct Applications {
        @Test("redis-cli and redis-benchmark reach redis-server in the other domain", .timeLimit(.minutes(4)))
        func redis() async throws {
            let lab = try await GatewayLab()
            let redisPort = lab.port(10)
            let importPort = lab.port(11)
            let redis = try lab.spawn(
                .beta,
                "redis-server",
                [
                    "--port", "\(redisPort)", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                    "--protected-mode", "no",
                ]
            )
            let up = await eventually(within: 10) {
                (try? await lab.run(.beta, "redis-cli", ["-p", "\(redisPort)", "PING"], seconds: 5).output)?.contains(
                    "PONG"
                ) == true
            }
            try #require(up, "redis-server did not start: \(redis.log)")
            try await lab.startGateways(
                exports: [.init(name: "redis", port: 6379, target: "tcp://127.0.0.1:\(redisPort)")],
                imports: [.init(name: "redis", listen: "tcp://127.0.0.1:\(importPort)", port: 6379)]
            )

            let cli = ["-p", "\(importPort)"]
            let set = try await lab.run(.alpha, "redis-cli", cli + ["SET", "greeting", "hello across domains"])
            #expect(set.status == 0 && set.output == "OK\n", "\(set.output)\n\(lab.gatewayLogs)")
            let get = try await lab.run(.alpha, "redis-cli", cli + ["GET", "greeting"])
            #expect(get.output == "hello across domains\n", "\(get.output)")
            // The value really is in beta's redis.
            let direct = try await lab.run(.beta, "redis-cli", ["-p", "\(redisPort)", "GET", "greeting"])
            #expect(direct.output == "hello across domains\n")
            if !lab.namespaces.isEmpty {
                // HMX is the only path: alpha cannot reach beta's redis directly.
                let bypass = try await lab.run(.alpha, "redis-cli", ["-p", "\(redisPort)", "PING"], seconds: 10)
                #expect(!bypass.output.contains("PONG"), "alpha reached beta's loopback: \(bypass.output)")
            }

            // A 1 MiB value in both directions.
            let big = try lab.shell(
                .alpha,
                """
                set -e
                head -c 786432 /dev/urandom | base64 -w0 > \(lab.directory.path)/big
                redis-cli \(cli.joined(separator: " ")) -x SET big < \(lab.directory.path)/big
                redis-cli \(cli.joined(separator: " ")) --raw GET big | tr -d '\\n' | cmp - \(lab.directory.path)/big
                echo same
                """
            )
            #expect(await big.wait(seconds: 60) == 0, "\(big.log)")
            #expect(big.output.hasSuffix("same\n"))

            let benchmark = try await lab.run(
                .alpha,
                "redis-benchmark",
                cli + ["-t", "set,get", "-n", "20000", "-c", "10", "-q"],
                seconds: 120
            )
            #expect(benchmark.status == 0, "\(benchmark.output)")
            #expect(
                benchmark.output.contains("SET:") && benchmark.output.contains("GET:")
                    && benchmark.output.contains("requests per second"),
                "\(benchmark.output)"
            )
            let pipelined = try await lab.run(
                .alpha,
                "redis-benchmark",
                cli + ["-t", "get", "-n", "50000", "-c", "10", "-P", "16", "-q"],
                seconds: 120
            )
            #expect(pipelined.status == 0 && pipelined.output.contains("GET:"), "\(pipelined.output)")
            let written = try await lab.run(.beta, "redis-cli", ["-p", "\(redisPort)", "EXISTS", "key:__rand_int__"])
            #expect(written.output == "1\n", "redis-benchmark's SETs reached beta's redis")

            #expect(await lab.stopGateways() == [], "\(lab.gatewayLogs)")
        }

        @Test("iperf3 through the gateways, both directions and 4 parallel streams", .timeLimit(.minutes(3)))
        func iperf3() async throws {
            let lab = try await GatewayLab()
            let serverPort = lab.port(20)
            let importPort = lab.port(21)
            let server = try lab.spawn(.beta, "iperf3", ["-s", "-p", "\(serverPort)", "-B", "127.0.0.1"])
            try await lab.startGateways(
                exports: [.init(name: "iperf3", port: 5201, target: "tcp://127.0.0.1:\(serverPort)")],
                imports: [.init(name: "iperf3", listen: "tcp://127.0.0.1:\(importPort)", port: 5201)]
            )
            for extra in [[], ["-R"], ["-P", "4"]] {
                let client = try lab.spawn(
                    .alpha,
                    "iperf3",
                    ["-c", "127.0.0.1", "-p", "\(importPort)", "-t", "3", "-J", "--connect-timeout", "5000"] + extra
                )
                let status = await client.wait(seconds: 30)
                #expect(
                    status == 0,
                    "iperf3 \(extra): \(client.log.suffix(2000))\n\(server.log.suffix(1000))\n\(lab.gatewayLogs)"
                )
                let report = (try? JSONSerialization.jsonObject(with: Data(client.output.utf8))) as? [String: Any]
                let end = report?["end"] as? [String: Any]
                let received = end?["sum_received"] as? [String: Any]
                let bytes = (received?["bytes"] as? NSNumber)?.doubleValue ?? 0
                #expect(bytes > 1_000_000, "iperf3 \(extra) moved \(bytes) bytes")
            }
        }
    }
}
