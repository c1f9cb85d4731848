// SPDX-License-Identifier: Apache-2.0
import HMXCore
import HMXStream
import HMXTestSupport
import NIOCore
import NIOEmbedded
import Testing

/// Scripted scenarios on the in-process hypervisor: one interleaving each, chosen
/// because it is rare in the real system.
@Suite("stream scenarios")
struct ScenarioTests {
    /// A driver's owner that admits every OPEN and records what happens.
    final class Recorder: StreamDriverDelegate {
        var driver: StreamDriver!
        var admitted: [ConnectionID] = []
        var ended: [ConnectionID: ConnectionEnd] = [:]
        var opened: [ConnectionID] = []

        func admit(_ id: ConnectionID, servicePort: UInt32) -> StreamDriver.Admission {
            self.admitted.append(id)
            return .dial()
        }

        func perform(_ action: StreamAction) {
            switch action {
            case .ended(let id, let end): self.ended[id] = end
            case .opened(let id): self.opened.append(id)
            default: break
            }
        }

        func turnEnded(_ statistics: StreamStatistics) {}
    }

    static func driver(_ link: InProcessLink) -> (StreamDriver, Recorder) {
        let recorder = Recorder()
        let driver = StreamDriver(
            link: link,
            configuration: .init(
                port: 4747,
                ringSize: 16_384,
                multiplexer: .init(window: 4096, maximumWindow: 4096, windowPool: 0)
            ),
            instance: UInt64(link.localDomain.rawValue)
        )
        recorder.driver = driver
        driver.delegate = recorder
        return (driver, recorder)
    }

    @Test("an OPEN sent before our ring for the peer existed is reset when the ring appears")
    func strandedOpen() throws {
        let loop = EmbeddedEventLoop()
        let hypervisor = InProcessHypervisor(eventLoop: loop)
        let alpha = try hypervisor.attach(DomainID(1), name: "alpha")
        let (alphaDriver, alphaRecorder) = Self.driver(alpha)
        // beta's domain does not exist yet: alpha's ring for it cannot be registered
        // (ESRCH); alpha retries after 100 ms.
        _ = alphaDriver.start(partners: [DomainID(2)], wildcard: false)
        loop.run()
        #expect(!alphaDriver.hasRing(for: DomainID(2)))
        let beta = try hypervisor.attach(DomainID(2), name: "beta")
        let (betaDriver, betaRecorder) = Self.driver(beta)
        _ = betaDriver.start(partners: [DomainID(1)], wildcard: false)
        loop.run()
        // A client of alpha connects before alpha's retry: the OPEN reaches beta (its
        // ring for alpha exists), but beta's ACCEPT cannot reach alpha.
        let id = alphaDriver.open(to: DomainID(2), servicePort: 7, idleTimeout: nil, openTimeout: .seconds(30))
        loop.run()
        let remote = try #require(betaRecorder.admitted.first)
        betaDriver.dialSucceeded(remote)
        loop.run()
        #expect(alphaDriver.connection(id)?.phase == .opening, "the answer could not reach alpha")
        #expect(alphaRecorder.ended[id] == nil)
        // alpha's retry registers the ring: the stranded connection is reset at once,
        // so its client can try again (not after the 30 s open timeout).
        loop.advanceTime(by: .milliseconds(100))
        loop.run()
        #expect(alphaDriver.hasRing(for: DomainID(2)))
        #expect(alphaRecorder.ended[id] == .terminated(.noRing))
        #expect(alphaDriver.activeConnectionCount == 0)
        // A new connection now opens.
        let next = alphaDriver.open(to: DomainID(2), servicePort: 7, idleTimeout: nil, openTimeout: .seconds(30))
        loop.run()
        betaDriver.dialSucceeded(try #require(betaRecorder.admitted.last))
        loop.run()
        #expect(alphaRecorder.opened.contains(next))
    }
}
