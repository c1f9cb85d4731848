// SPDX-License-Identifier: Apache-2.0
import HMXConfig
import HMXCore
import HMXGateway
import HMXStream
import Testing

@Suite("Export admission: allow-list, limits in all and per peer, idle timeout")
struct AdmissionTests {
    static let config = """
        link: {emulator: /a}
        peers: {alpha: 1, gamma: 3}
        exports:
          - {name: shared, port: 7, target: "tcp://127.0.0.1:1", allow: [any], max_connections: 10}
          - {name: two, port: 8, target: "tcp://127.0.0.1:1", allow: [alpha, gamma], max_connections: 10, max_connections_per_peer: 3, idle_timeout: 30s}
          - {name: own, port: 9, target: "tcp://127.0.0.1:1", allow: [alpha], max_connections: 10}
        """

    @Test("one domain gets at most its share of an export others may use; the default share is half")
    func perPeer() throws {
        let config = try GatewayConfig.parse(Self.config, file: "gw.yaml")
        #expect(config.exports.map(\.maxConnectionsPerPeer) == [5, 3, 10])
        #expect(config.exports[1].idleTimeoutMilliseconds == 30_000)
        var open: [String: [DomainID: Int]] = [:]
        func admit(_ peer: DomainID, _ port: UInt32) -> GatewayConfig.Admission {
            let decision = config.admission(of: peer, to: port) { mapping, peer in
                (open[mapping, default: [:]].values.reduce(0, +), open[mapping, default: [:]][peer, default: 0])
            }
            if case .admitted(let export) = decision {
                open["export:\(export.name)", default: [:]][peer, default: 0] += 1
            }
            return decision
        }
        // A flooding domain takes five of the ten, no more...
        let flood = (0..<8).map { _ in admit(DomainID(66), 7) }
        #expect(flood.filter { if case .admitted = $0 { true } else { false } }.count == 5)
        #expect(flood.last == .refused(.limitReached, export: "shared"))
        // ...and the others still get in.
        #expect(admit(DomainID(1), 7) == .admitted(config.exports[0]))
        for _ in 0..<3 { _ = admit(DomainID(3), 8) }
        #expect(admit(DomainID(3), 8) == .refused(.limitReached, export: "two"))
        #expect(admit(DomainID(1), 8) == .admitted(config.exports[1]))
        #expect(admit(DomainID(3), 9) == .refused(.deniedByGateway, export: "own"))
        #expect(admit(DomainID(1), 99) == .refused(.noSuchService))
    }

    @Test("max_connections_per_peer above max_connections is an error with file, line and key")
    func perPeerAboveTotal() {
        let text =
            "link: {emulator: /a}\nexports:\n  - {name: x, port: 1, target: \"tcp://h:1\", allow: [any], max_connections: 4, max_connections_per_peer: 5}\n"
        #expect(throws: (any Error).self) { try GatewayConfig.parse(text, file: "gw.yaml") }
        do {
            _ = try GatewayConfig.parse(text, file: "gw.yaml")
        } catch {
            #expect(
                error.description
                    == "gw.yaml:3: exports[0].max_connections_per_peer: must be at most max_connections (4)"
            )
        }
    }

    @Test("check-config prints the shares and timeouts")
    func summary() throws {
        let config = try GatewayConfig.parse(Self.config, file: "gw.yaml")
        #expect(
            config.summary.contains {
                $0.hasPrefix("export two:") && $0.contains("max 10 connections, 3 per peer")
                    && $0.contains("idle timeout 30000 ms")
            }
        )
        #expect(config.summary.contains { $0.hasPrefix("export own:") && !$0.contains("per peer") })
    }
}
