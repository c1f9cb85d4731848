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
                absentDomain: DomainID(0x7000)
            )
            let outcome = await ConformanceSuite.run(name, in: world)
            #expect(outcome == .passed, "\(name): \(outcome)")
            _ = try? await primary.close().get()
            _ = try? await peer.close().get()
        }
    }
}
