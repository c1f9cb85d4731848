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

        /// Attaches the test process as beta once alpha's gateway is attached (a ring's
        /// partner must exist), registers beta's ring for alpha, and waits until alpha's
        /// gateway has its ring for beta, as a real peer would.
        static func attachAsBeta(
            _ lab: GatewayLab,
            behaviour: HostileEnd.Behaviour
        ) async throws -> (EmulatorLink, HostileEnd) {
            let link = try await EmulatorLink.attach(socketPath: "\(lab.directory.path)/beta.sock")
            let alphaRing = HMXAddress(domain: DomainID(1), port: Self.gatewayPort)
            var ring: HMXRing?
            let registered = try await eventually(within: 20) {
                // Registered once (every registration counts towards the domain's 128).
                if ring == nil {
                    ring = try? await link.registerRing(
                        port: Self.gatewayPort,
                        partner: DomainID(1),
                        length: 262_080,
                        failIfExists: true
                    ).get()
                }
                guard ring != nil else { return false }
                let answer = try await link.notify([HMXNotifyQuery(ring: alphaRing, spaceRequired: 0)]).get()
                return answer.first?.flags.contains(.exists) == true
            }
            try #require(registered, "alpha's gateway and its ring for beta did not come up: \(lab.gatewayLogs)")
            let peer = HostileEnd(link: link, ring: try #require(ring), behaviour: behaviour)
            link.setEventHandler { peer.onEvent() }
            return (link, peer)
        }

        /// The peer accepts a connection with the largest credit the protocol allows,
        /// then never drains its ring again. The importing gateway must stop reading its
        /// client once a few messages wait for the peer, not buffer what the client
        /// sends until memory runs out; when the peer stops answering, the client sees
        /// the end.
        @Test(
            "a peer that grants 1 GiB of credit and stops draining its ring: the gateway's memory stays bounded",
            .timeLimit(.minutes(2))
        )
        func creditWithoutDraining() async throws {
            let lab = try await GatewayLab()
            let importPort = lab.port(80)
            let alpha = try lab.startGateway(
                .alpha,
                config: try lab.gatewayConfig(
                    .alpha,
                    exports: [],
                    imports: [.init(name: "hostile", listen: "tcp://127.0.0.1:\(importPort)", port: 9020)]
                )
            )

            let (link, peer) = try await Self.attachAsBeta(lab, behaviour: .acceptWithAllCredit)

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

        /// The peer keeps answering keepalives but never answers an OPEN (its ACCEPT was
        /// lost, say): the importing gateway gives up after the import's open_timeout and
        /// resets the client, instead of holding it for ever.
        @Test("a peer that never answers OPEN: the client is reset after open_timeout", .timeLimit(.minutes(2)))
        func unansweredOpen() async throws {
            let lab = try await GatewayLab()
            let importPort = lab.port(81)
            let metricsPort = lab.port(82)
            let alpha = try lab.startGateway(
                .alpha,
                config: try lab.gatewayConfig(
                    .alpha,
                    exports: [],
                    imports: [
                        .init(
                            name: "silent",
                            listen: "tcp://127.0.0.1:\(importPort)",
                            port: 9021,
                            extra: ["open_timeout: 2s"]
                        )
                    ],
                    extra: "metrics:\n  listen: tcp://127.0.0.1:\(metricsPort)\n"
                )
            )
            let (link, peer) = try await Self.attachAsBeta(lab, behaviour: .answerPingsOnly)
            let started = Date()
            let client = try lab.tool(.alpha, ["stream", "--port", "\(importPort)", "--timeout", "60"])
            #expect(await client.wait(seconds: 8) == 0, "\(client.log)\n\(lab.gatewayLogs)")
            let waited = Date().timeIntervalSince(started)
            #expect(client.output.contains("ended"), "\(client.log)")
            #expect(waited > 1.5, "reset after \(waited) s, before the 2 s open_timeout")
            #expect(peer.opensSeen >= 1, "no OPEN reached the peer")
            #expect(alpha.log.contains("no answer from the peer"), "\(alpha.log)")
            let metrics = try await lab.metrics(.alpha, port: metricsPort)
            #expect(metrics["hmx_import_connections_total{outcome=\"peer_lost\"}"] == 1, "\(metrics)")
            #expect(metrics["hmx_active_connections"] == 0, "\(metrics)")
            _ = try? await link.close().get()
        }
    }
}

/// The hostile peer's side, on the link's event loop. `acceptWithAllCredit`: reads the
/// ring until an OPEN arrives, answers it with an ACCEPT granting 2^30 - 1 bytes of
/// credit, then leaves the ring alone. `answerPingsOnly`: keeps draining the ring and
/// answers every PING, but never an OPEN.
final class HostileEnd: @unchecked Sendable {
    // @unchecked: state is touched only on the link's event loop, except the counters
    // read by the test (a lock guards them).
    enum Behaviour {
        case acceptWithAllCredit
        case answerPingsOnly
    }

    private let link: EmulatorLink
    private let ring: HMXRing
    private let behaviour: Behaviour
    private let lock = NSLock()
    private var accepted = false
    private var opens = 0
    private var nextNumber: UInt32 = 0
    private let instance: UInt64 = 0x4854_494C_4500

    init(link: EmulatorLink, ring: HMXRing, behaviour: Behaviour) {
        self.link = link
        self.ring = ring
        self.behaviour = behaviour
    }

    var hasAccepted: Bool { self.lock.withLock { self.accepted } }
    var opensSeen: Int { self.lock.withLock { self.opens } }

    func onEvent() {
        guard !self.hasAccepted else { return }
        var frames: [StreamFrame] = []
        _ = try? self.ring.receive { message in
            var payload = ByteBuffer(bytes: Array(message.first) + Array(message.second))
            while let frame = try? StreamFrame.parse(&payload) { frames.append(frame) }
        }
        for frame in frames {
            switch (frame, self.behaviour) {
            case (.open(let id, _, _, _, _, _, _), .acceptWithAllCredit):
                self.lock.withLock {
                    self.opens += 1
                    self.accepted = true
                }
                let credit = UInt32(StreamFlowControl.maximumCredit - 1)
                self.send(
                    .accept(key: .init(id: id, openedLocally: false), initialCredit: credit, instance: self.instance)
                )
                return
            case (.open, .answerPingsOnly):
                self.lock.withLock { self.opens += 1 }
            case (.ping(_, let nonce), .answerPingsOnly):
                self.send(.pong(instance: self.instance, nonce: nonce))
            default:
                break
            }
        }
    }

    /// One message: SEQUENCE (every earlier message counts as delivered), then `frame`.
    private func send(_ frame: StreamFrame) {
        var message = ByteBuffer()
        StreamFrame.sequence(number: self.nextNumber, base: self.nextNumber, instance: self.instance).encode(
            into: &message
        )
        self.nextNumber &+= 1
        frame.encode(into: &message)
        let port = GatewayEndToEndTests.HostilePeer.gatewayPort
        _ = self.link.send(
            from: port,
            to: HMXAddress(domain: DomainID(1), port: port),
            type: StreamFrame.messageType,
            message
        )
    }
}
