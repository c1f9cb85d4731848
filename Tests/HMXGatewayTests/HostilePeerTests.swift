// SPDX-License-Identifier: Apache-2.0
import Foundation
import HMXCore
import HMXEmulator
import HMXProcessTestSupport
import HMXStream
import NIOCore
import Testing

extension GatewayEndToEndTests {
    /// A peer domain that speaks the stream protocol but not in good faith. The test
    /// process itself attaches to the emulator as beta and plays that peer.
    @Suite("hostile peer")
    struct HostilePeer {
        /// The gateway protocol's Argo port (the configuration's default).
        static let gatewayPort: HMXPort = 4747

        /// The peer accepts a connection with the largest credit the protocol allows,
        /// then never drains its ring again. The importing gateway must stop reading its
        /// client once a few messages wait for the peer, not buffer what the client
        /// sends until memory runs out; when the peer stops answering, the client sees
        /// the end.
        @Test("a peer that grants 1 GiB of credit and stops draining its ring: the gateway's memory stays bounded", .timeLimit(.minutes(2)))
        func creditWithoutDraining() async throws {
            let lab = try await GatewayLab()
            let importPort = lab.port(80)
            let alpha = try lab.startGateway(
                .alpha,
                config: try lab.gatewayConfig(.alpha, exports: [], imports: [.init(name: "hostile", listen: "tcp://127.0.0.1:\(importPort)", port: 9020)])
            )

            // Attach as beta once alpha's gateway is attached (a ring's partner must exist),
            // and wait until alpha's gateway has its ring for us, as a real peer would.
            let link = try await EmulatorLink.attach(socketPath: "\(lab.directory.path)/beta.sock")
            let alphaRing = HMXAddress(domain: DomainID(1), port: Self.gatewayPort)
            var ring: HMXRing?
            let registered = try await eventually(within: 20) {
                // Registered once (every registration counts towards the domain's 128).
                if ring == nil {
                    ring = try? await link.registerRing(port: Self.gatewayPort, partner: DomainID(1), length: 262_080, failIfExists: true).get()
                }
                guard ring != nil else { return false }
                let answer = try await link.notify([HMXNotifyQuery(ring: alphaRing, spaceRequired: 0)]).get()
                return answer.first?.flags.contains(.exists) == true
            }
            try #require(registered, "alpha's gateway and its ring for beta did not come up: \(lab.gatewayLogs)")
            let peer = HostileEnd(link: link, ring: try #require(ring))
            link.setEventHandler { peer.onEvent() }

            let before = alpha.residentKiB() ?? 0
            let client = try lab.tool(.alpha, ["stream", "--port", "\(importPort)", "--timeout", "60"])
            let accepted = await eventually(within: 20) { peer.hasAccepted }
            try #require(accepted, "no OPEN reached the peer: \(client.log)\n\(lab.gatewayLogs)")

            // The client writes as fast as loopback takes it for three seconds (before the
            // gateway gives the silent peer up). Without a bound on what waits for the
            // peer, the gateway would hold nearly all of it: gigabytes.
            var peak = before
            let until = Date().addingTimeInterval(3)
            while Date() < until {
                peak = max(peak, alpha.residentKiB() ?? 0)
                try await Task.sleep(nanoseconds: 50_000_000)
            }
            #expect(peak - before < 64 * 1024, "the gateway grew from \(before) KiB to \(peak) KiB")
            #expect(peak > 0, "no memory figure for the gateway")

            // The peer answers no keepalive: the gateway ends its connections, and the
            // client sees the end.
            #expect(await client.wait(seconds: 15) == 0, "\(client.log)\n\(lab.gatewayLogs)")
            #expect(client.output.contains("ended"), "\(client.log)")
            #expect(alpha.isRunning, "\(lab.gatewayLogs)")
            _ = try? await link.close().get()
        }
    }
}

/// The hostile peer's side: reads the ring until an OPEN arrives, answers it with an
/// ACCEPT granting 2^30 - 1 bytes of credit, then leaves the ring alone.
private final class HostileEnd: @unchecked Sendable {
    // @unchecked: state is touched only on the link's event loop, except the flag
    // read by the test (a lock guards it).
    private let link: EmulatorLink
    private let ring: HMXRing
    private let lock = NSLock()
    private var accepted = false
    private let instance: UInt64 = 0x4854_494C_4500

    init(link: EmulatorLink, ring: HMXRing) {
        self.link = link
        self.ring = ring
    }

    var hasAccepted: Bool { self.lock.withLock { self.accepted } }

    func onEvent() {
        guard !self.hasAccepted else { return }
        var openID: UInt32?
        _ = try? self.ring.receive { message in
            guard openID == nil else { return }
            var payload = ByteBuffer(bytes: Array(message.first) + Array(message.second))
            while let frame = try? StreamFrame.parse(&payload) {
                if case .open(let id, _, _, _, _) = frame { openID = id }
            }
        }
        guard let id = openID else { return }
        var reply = ByteBuffer()
        StreamFrame.sequence(number: 0, base: 0, instance: self.instance).encode(into: &reply)
        StreamFrame.accept(key: .init(id: id, openedLocally: false), initialCredit: UInt32(StreamConnectionState.maximumCredit - 1), instance: self.instance)
            .encode(into: &reply)
        self.lock.withLock { self.accepted = true }
        let port = GatewayEndToEndTests.HostilePeer.gatewayPort
        _ = self.link.send(from: port, to: HMXAddress(domain: DomainID(1), port: port), type: StreamFrame.messageType, reply)
    }
}
