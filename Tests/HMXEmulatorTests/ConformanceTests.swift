// SPDX-License-Identifier: Apache-2.0
import HMXConformance
import HMXCore
import HMXEmulator
import NIOCore
import Testing

/// The backend-neutral Argo conformance suite against the emulator, with and
/// without wildcard rings (Xen's mac-permissive). The Xen lab runs the same checks.
@Suite("Argo conformance of the emulator", .serialized)
struct ConformanceTests {
    @Test(arguments: ConformanceSuite.checkNames, [true, false])
    func check(_ name: String, macPermissive: Bool) async throws {
        try await withEmulator(macPermissive: macPermissive) { emulator in
            let primary = try await emulator.attach(1)
            let peer = try await emulator.attach(2)
            let world = ConformanceSuite.World(
                primary: primary,
                peer: peer,
                wildcardRingsAllowed: macPermissive,
                absentDomain: DomainID(0x7000),
                destroyPeer: { _ = try await peer.close().get() }
            )
            let outcome = await ConformanceSuite.run(name, in: world)
            #expect(outcome == .passed, "\(name): \(outcome)")
            _ = try? await primary.close().get()
            _ = try? await peer.close().get()
        }
    }
}

/// The two-domain checks with the second domain behind the agent protocol, as on Xen
/// (where `hmx-conformance agent` in a domU answers through xenstore): here the agent
/// answers in process, on a second emulator link.
@Suite("Argo conformance with a remote second domain", .serialized)
struct RemotePeerConformanceTests {
    static let twoDomainChecks = ConformanceSuite.checkNames.filter { $0.hasPrefix("two domains:") }

    @Test(arguments: Self.twoDomainChecks)
    func check(_ name: String) async throws {
        #expect(Self.twoDomainChecks.count == 9)
        try await withEmulator(macPermissive: false) { emulator in
            let primary = try await emulator.attach(1)
            let agentLink = try await emulator.attach(2)
            let agent = ConformanceAgent(link: agentLink)
            let remote = try await RemotePeer.connect { line in
                let answer = await agent.answer(line)
                agent.releaseMemory()
                return answer
            }
            #expect(remote.domain == DomainID(2))
            let world = ConformanceSuite.World(
                primary: primary,
                peer: nil,
                remotePeer: remote,
                wildcardRingsAllowed: false,
                absentDomain: DomainID(0x7000),
                destroyPeer: {
                    try await remote.quit()
                    _ = try await agentLink.close().get()
                }
            )
            let outcome = await ConformanceSuite.run(name, in: world)
            #expect(outcome == .passed, "\(name): \(outcome)")
            try await remote.quit()
            #expect(agent.isStopped)
            _ = try? await primary.close().get()
            _ = try? await agentLink.close().get()
        }
    }

    @Test("the agent refuses what is not a request, and bounds what a request carries")
    func malformed() async throws {
        try await withEmulator(macPermissive: false) { emulator in
            let link = try await emulator.attach(2)
            let agent = ConformanceAgent(link: link)
            for line in ["", "sendv 1 2 3", "sendv 1 2 3 4 zz", "sendv 1 2 3 4 abc", "events now", "reboot"] {
                #expect(await agent.answer(line) == "error malformed request", "\(line)")
            }
            let tooMuch = String(repeating: "00", count: 1501)
            #expect(await agent.answer("sendv 2 1 1 1 \(tooMuch)") == "error malformed request")
            #expect(await agent.answer("domain") == "2")
            #expect(await agent.answer("events") == "0")
            // A send to a ring that does not exist (its own, port 77): the hypervisor's
            // answer, as a number.
            let answer = await agent.answer("sendv 2 1 2 77 0102")
            #expect(answer == "\(-Int64(ArgoErrno.ECONNREFUSED.rawValue))", "\(answer)")
            _ = try? await link.close().get()
        }
    }

    @Test("the agent's rings: register, receive, notify, unregister, and their bounds")
    func agentRings() async throws {
        try await withEmulator(macPermissive: false) { emulator in
            let sender = try await emulator.attach(1)
            let link = try await emulator.attach(2)
            let agent = ConformanceAgent(link: link)
            for line in [
                "register 7 1", "register 7 1 65552", "register x 1 4032", "receive 7", "receive 7 1 2",
                "unregister 7", "notify now",
            ] {
                #expect(await agent.answer(line) == "error malformed request", "\(line)")
            }
            #expect(await agent.answer("receive 7 1") == "error no ring 7 for 1")
            #expect(await agent.answer("register 7 1 4032") == "0")
            #expect(await agent.answer("register 7 1 4032").hasPrefix("error ring 7 for 1 is registered already"))
            agent.releaseMemory()  // the ring's memory is kept
            #expect(await agent.answer("receive 7 1") == "none")
            let destination = HMXAddress(domain: DomainID(2), port: 7)
            _ = try await sender.send(from: 9, to: destination, type: 1, ByteBuffer(bytes: [0xAB, 0x01])).get()
            _ = try await sender.send(from: 9, to: destination, type: 1, ByteBuffer()).get()
            #expect(await agent.answer("receive 7 1") == "1 9 ab01")
            #expect(await agent.answer("receive 7 1") == "1 9 -")
            #expect(await agent.answer("receive 7 1") == "none")
            #expect(await agent.answer("notify") == "0")
            // A message too large to answer is consumed and reported.
            _ = try await sender.send(from: 9, to: destination, type: 1, ByteBuffer(repeating: 1, count: 1501)).get()
            #expect(await agent.answer("receive 7 1") == "error a message of 1501 bytes is too large for an answer")
            #expect(await agent.answer("unregister 7 1") == "0")
            #expect(await agent.answer("receive 7 1") == "error no ring 7 for 1")
            // quit unregisters what is left.
            #expect(await agent.answer("register 8 1 4032") == "0")
            #expect(await agent.answer("quit") == "0")
            let refused = try? await sender.send(
                from: 9,
                to: HMXAddress(domain: DomainID(2), port: 8),
                type: 1,
                ByteBuffer()
            )
            .get()
            #expect(refused == nil)
            _ = try? await sender.close().get()
            _ = try? await link.close().get()
        }
    }
}
