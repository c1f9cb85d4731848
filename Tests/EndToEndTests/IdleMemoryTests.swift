// SPDX-License-Identifier: Apache-2.0
import Foundation
import HMXProcessTestSupport
import Testing

extension GatewayEndToEndTests {
    @Suite("memory")
    struct Memory {
        @Test("1000 idle connections cost each gateway at most 64 KiB of RSS apiece", .timeLimit(.minutes(3)))
        func idleConnections() async throws {
            let lab = try await GatewayLab()
            let count = 1000
            try await lab.startGateways()
            let gateways = try GatewayLab.Domain.allCases.map { domain in (domain, try #require(lab.gateways[domain])) }
            try await Task.sleep(nanoseconds: 1_000_000_000)
            let before = gateways.map { $0.1.residentKiB() ?? 0 }

            let go = "\(lab.directory.path)/go-idle"
            let held = try lab.tool(
                .alpha,
                ["hold", "--port", "\(lab.echoPort)", "--count", "\(count)", "--go", go, "--timeout", "120"]
            )
            try #require(
                await eventually(within: 90) { held.output.contains("holding \(count)") },
                "\(held.log)\n\(lab.gatewayLogs.suffix(4000))"
            )
            try await Task.sleep(nanoseconds: 2_000_000_000)
            let after = gateways.map { $0.1.residentKiB() ?? 0 }

            for (index, (domain, gateway)) in gateways.enumerated() {
                let perConnection = Double(after[index] - before[index]) / Double(count)
                print(
                    "idle memory: gateway \(domain.rawValue) (pid \(gateway.pid)) VmRSS \(before[index]) KiB -> \(after[index]) KiB with \(count) idle connections: \(String(format: "%.1f", perConnection)) KiB per connection"
                )
                #expect(before[index] > 0 && after[index] > 0, "VmRSS of gateway \(domain.rawValue)")
                #expect(perConnection <= 64, "gateway \(domain.rawValue): \(perConnection) KiB per idle connection")
            }
            _ = try lab.directory.write("go-idle", "")
            #expect(
                await held.wait(seconds: 60) == 0,
                "the idle connections still work: \(held.log)\n\(lab.gatewayLogs.suffix(4000))"
            )
            #expect(held.output.contains("ok \(count)"), "\(held.log)")
        }
    }
}
