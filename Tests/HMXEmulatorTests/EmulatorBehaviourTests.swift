// SPDX-License-Identifier: Apache-2.0
import CHMXShims
import Foundation
import HMXCore
import HMXEmulator
import HMXProcessTestSupport
import NIOConcurrencyHelpers
import NIOCore
import Testing

/// Emulator behaviours beyond what one domain can observe: identity from the socket,
/// policy, detach cleanup, pending-sender limits and hostile clients.
@Suite("Emulator behaviour")
struct EmulatorBehaviourTests {
    func send(_ link: EmulatorLink, to address: HMXAddress, _ text: String, from port: HMXPort = 0) async throws -> Int
    {
        try await link.send(from: port, to: address, type: 1, ByteBuffer(string: text)).get()
    }

    func argoErrno(_ body: () async throws -> Void) async -> ArgoErrno? {
        do {
            try await body()
            return nil
        } catch let error as HMXError {
            return error.errno
        } catch {
            return nil
        }
    }

    @Test("a process is the domain of the socket it attached to")
    func identityComesFromTheSocket() async throws {
        try await withEmulator(domains: [1, 2, 3]) { emulator in
            let one = try await emulator.attach(1)
            let three = try await emulator.attach(3)
            #expect(one.localDomain == DomainID(1))
            #expect(three.localDomain == DomainID(3))
            let ring = try await three.registerRing(port: 80, partner: .any, length: 4032, failIfExists: true).get()
            _ = try await self.send(one, to: HMXAddress(domain: DomainID(3), port: 80), "who am i")
            var sources: [HMXAddress] = []
            _ = try ring.receive { sources.append($0.source) }
            #expect(sources == [HMXAddress(domain: DomainID(1), port: 0)])
            // Claiming to be domain 2 in the source address is refused by the hypervisor.
            let forged = await self.argoErrno {
                _ = try await one.rawHypercallSend(
                    source: ArgoAddr(port: 0, domain: 2),
                    to: HMXAddress(domain: DomainID(3), port: 80)
                )
            }
            #expect(forged == .EPERM)
        }
    }

    @Test("a second process cannot attach as a domain that is attached")
    func oneProcessPerDomain() async throws {
        try await withEmulator { emulator in
            let first = try await emulator.attach(1)
            await #expect(throws: HMXError.self) { _ = try await emulator.attach(1) }
            // The first one is unaffected.
            let ring = try await first.registerRing(port: 1, partner: DomainID(1), length: 4032, failIfExists: true)
                .get()
            _ = try await self.send(first, to: HMXAddress(domain: DomainID(1), port: 1), "still here")
            #expect(try ring.receive { _ in } == 1)
        }
    }

    @Test("a uid restriction refuses other users")
    func uidRestriction() async throws {
        let otherUID = getuid() == 0 ? 4242 : getuid() + 1
        try await withEmulator(domains: [1, 2], domainExtra: [1: "uid: \(otherUID)", 2: "uid: \(getuid())"]) {
            emulator in
            do {
                _ = try await emulator.attach(1)
                Issue.record("attach as a domain reserved for uid \(otherUID) succeeded")
            } catch let error as HMXError {
                #expect(error.code == .attachRefused)
                #expect(error.message.contains("may not attach"))
            }
            let allowed = try await emulator.attach(2)
            #expect(allowed.localDomain == DomainID(2))
        }
    }

    @Test("a detached domain is destroyed: its rings, partner rings naming it and its waits")
    func detachCleanup() async throws {
        try await withEmulator(domains: [1, 2]) { emulator in
            let one = try await emulator.attach(1)
            var two: EmulatorLink? = try await emulator.attach(2)
            _ = try await one.registerRing(port: 10, partner: DomainID(2), length: 256, failIfExists: true).get()
            _ = try await one.registerRing(port: 11, partner: .any, length: 256, failIfExists: true).get()
            _ = try await two!.registerRing(port: 20, partner: DomainID(1), length: 4032, failIfExists: true).get()
            // Domain 2 fills the wildcard ring and waits for space there.
            _ = try await self.send(
                two!,
                to: HMXAddress(domain: DomainID(1), port: 11),
                String(repeating: "x", count: 224)
            )
            #expect(
                await self.argoErrno {
                    _ = try await self.send(two!, to: HMXAddress(domain: DomainID(1), port: 11), "y")
                } == .EAGAIN
            )
            #expect(try await emulator.server.withHypervisor { $0.ringCount(of: DomainID(1)) } == 2)
            #expect(
                try await emulator.server.withHypervisor {
                    $0.pendingCount(owner: DomainID(1), port: 11, partner: .any)
                } == 1
            )
            _ = try await two!.close().get()
            two = nil
            let gone = try await eventually {
                try await emulator.server.attachedDomains() == [DomainID(1)]
            }
            #expect(gone)
            // The partner ring naming domain 2 went away with it; the wildcard ring stays.
            #expect(try await emulator.server.withHypervisor { $0.ringCount(of: DomainID(1)) } == 1)
            #expect(
                try await emulator.server.withHypervisor {
                    $0.pendingCount(owner: DomainID(1), port: 11, partner: .any)
                } == 0
            )
            #expect(
                await self.argoErrno {
                    _ = try await self.send(one, to: HMXAddress(domain: DomainID(2), port: 20), "z")
                } == .ESRCH
            )
            // A new process may attach as domain 2 and starts from nothing.
            let again = try await emulator.attach(2)
            #expect(try await emulator.server.withHypervisor { $0.ringCount(of: DomainID(2)) } == 0)
            #expect(
                await self.argoErrno {
                    _ = try await self.send(one, to: HMXAddress(domain: DomainID(2), port: 20), "z")
                } == .ECONNREFUSED
            )
            _ = try await again.close().get()
        }
    }

    @Test("results that may be late still all arrive, in order, and failures are never held back")
    func deferredResults() async throws {
        try await withEmulator(domains: [1, 2]) { emulator in
            let one = try await emulator.attach(1)
            let two = try await emulator.attach(2)
            let ring = try await two.registerRing(port: 20, partner: DomainID(1), length: 4032, failIfExists: true)
                .get()
            let destination = HMXAddress(domain: DomainID(2), port: 20)
            func late(_ text: String) -> EventLoopFuture<Int> {
                one.sendv(from: 1, to: destination, type: 7, iovecs: [ByteBuffer(string: text)], resultMayBeLate: true)
            }
            // Alone, a deferrable send completes (held back at most briefly).
            #expect(try await late("a").get() == 1)
            // Several, then one that is not deferrable: all complete, in the order sent.
            let order = NIOLockedValueBox<[Int]>([])
            var futures: [EventLoopFuture<Int>] = []
            for (index, text) in ["bb", "ccc", "dddd"].enumerated() {
                futures.append(
                    late(text).map { value in
                        order.withLockedValue { $0.append(index) }
                        return value
                    }
                )
            }
            futures.append(
                one.sendv(from: 1, to: destination, type: 7, iovecs: [ByteBuffer(string: "eeeee")]).map { value in
                    order.withLockedValue { $0.append(3) }
                    return value
                }
            )
            var sizes: [Int] = []
            for future in futures { sizes.append(try await future.get()) }
            #expect(sizes == [2, 3, 4, 5])
            #expect(order.withLockedValue { $0 } == [0, 1, 2, 3])
            // The receiver got them all, in order.
            var received: [String] = []
            _ = try ring.receive { message in
                received.append(
                    String(decoding: message.first, as: UTF8.self) + String(decoding: message.second, as: UTF8.self)
                )
            }
            #expect(received == ["a", "bb", "ccc", "dddd", "eeeee"])
            // A failure is reported at once even when the send was marked deferrable.
            let failure = one.sendv(
                from: 1,
                to: HMXAddress(domain: DomainID(2), port: 99),
                type: 7,
                iovecs: [ByteBuffer(string: "x")],
                resultMayBeLate: true
            )
            #expect(await self.argoErrno { _ = try await failure.get() } == .ECONNREFUSED)
            _ = try await one.close().get()
            _ = try await two.close().get()
        }
    }

    @Test("tagged sends: each result reaches the sink with its tag, in order, failures included")
    func taggedSends() async throws {
        try await withEmulator(domains: [1, 2]) { emulator in
            let one = try await emulator.attach(1)
            let two = try await emulator.attach(2)
            // Room for two 16-byte messages (32 bytes with their headers each) only.
            let ring = try await two.registerRing(port: 20, partner: DomainID(1), length: 96, failIfExists: true).get()
            let destination = HMXAddress(domain: DomainID(2), port: 20)
            let sends: [(tag: UInt64, to: HMXAddress, late: Bool)] = [
                (10, destination, true),
                (11, HMXAddress(domain: DomainID(2), port: 99), true),  // no such ring
                (12, destination, false),
                (13, destination, true),  // the ring is full
            ]
            let results = try await one.eventLoop.flatSubmit { () -> EventLoopFuture<[ResultSink.Entry]> in
                let sink = ResultSink(expecting: sends.count, on: one.eventLoop)
                for send in sends {
                    one.sendv(
                        from: 1,
                        to: send.to,
                        type: 7,
                        iovecs: [ByteBuffer(repeating: 0x61, count: 16)],
                        resultMayBeLate: send.late,
                        tag: send.tag,
                        resultsTo: sink
                    )
                }
                return sink.done.futureResult
            }.get()
            #expect(results.map(\.tag) == [10, 11, 12, 13])
            #expect(results[0].result == .success(16))
            #expect((try? results[1].result.get()) == nil && results[1].errno == .ECONNREFUSED)
            #expect(results[2].result == .success(16))
            #expect(results[3].errno == .EAGAIN)
            #expect(try ring.receive { _ in } == 2)
            // A closed link fails a tagged send at once, before sendv returns.
            _ = try await one.close().get()
            let closed = try await one.eventLoop.submit { () -> [ResultSink.Entry] in
                let sink = ResultSink(expecting: 1, on: one.eventLoop)
                one.sendv(
                    from: 1,
                    to: destination,
                    type: 7,
                    iovecs: [ByteBuffer(string: "x")],
                    resultMayBeLate: true,
                    tag: 14,
                    resultsTo: sink
                )
                return sink.entries
            }.get()
            #expect(closed.map(\.tag) == [14])
            #expect((try? closed.first?.result.get()) == nil)
            _ = try await two.close().get()
        }
    }

    @Test("more than 32 waiting domains on one ring is EBUSY")
    func pendingLimit() async throws {
        let ids = (1...34).map { UInt16($0) }
        try await withEmulator(domains: ids) { emulator in
            let owner = try await emulator.attach(1)
            _ = try await owner.registerRing(port: 5, partner: .any, length: 48, failIfExists: true).get()
            var links: [EmulatorLink] = []
            for id in ids.dropFirst() {
                links.append(try await emulator.attach(id))
            }
            // 48-byte ring: one 16-byte payload fills it.
            _ = try await self.send(
                links[0],
                to: HMXAddress(domain: DomainID(1), port: 5),
                String(repeating: "a", count: 16)
            )
            var outcomes: [ArgoErrno?] = []
            for link in links {
                outcomes.append(
                    await self.argoErrno {
                        _ = try await self.send(link, to: HMXAddress(domain: DomainID(1), port: 5), "b")
                    }
                )
            }
            #expect(outcomes.prefix(32).allSatisfy { $0 == .EAGAIN })
            #expect(outcomes[32] == .EBUSY)
            // The same domain waiting again does not take a second place.
            #expect(
                await self.argoErrno {
                    _ = try await self.send(links[0], to: HMXAddress(domain: DomainID(1), port: 5), "c")
                } == .EAGAIN
            )
            let (_, entries) = try await owner.notifyRaw(HMXAddress(domain: DomainID(1), port: 5), spaceRequired: 1)
            #expect(ArgoABI.RingFlags(rawValue: entries.flags).contains(.busy))
        }
    }

    @Test("policy: first match wins, default deny, applied to sendv and notify, reloadable")
    func policy() async throws {
        let policy = """
              - {action: deny, from: d1, to: d2, port: 22}
              - {action: allow, from: d1, to: d2, port: 1-100}
            """
        try await withEmulator(domains: [1, 2], policy: policy) { emulator in
            let one = try await emulator.attach(1)
            let two = try await emulator.attach(2)
            let ring22 = try await two.registerRing(port: 22, partner: DomainID(1), length: 4032, failIfExists: true)
                .get()
            let ring80 = try await two.registerRing(port: 80, partner: DomainID(1), length: 4032, failIfExists: true)
                .get()
            let ring500 = try await two.registerRing(port: 500, partner: DomainID(1), length: 4032, failIfExists: true)
                .get()
            #expect(
                await self.argoErrno {
                    _ = try await self.send(one, to: HMXAddress(domain: DomainID(2), port: 22), "ssh")
                } == .EACCES
            )
            #expect(try await self.send(one, to: HMXAddress(domain: DomainID(2), port: 80), "http") == 4)
            #expect(
                await self.argoErrno {
                    _ = try await self.send(one, to: HMXAddress(domain: DomainID(2), port: 500), "x")
                } == .EACCES
            )
            // No rule lets domain 2 send back: default deny.
            let back = try await one.registerRing(port: 9, partner: DomainID(2), length: 4032, failIfExists: true).get()
            #expect(
                await self.argoErrno { _ = try await self.send(two, to: HMXAddress(domain: DomainID(1), port: 9), "x") }
                    == .EACCES
            )
            // notify does not describe a ring the caller may not send to.
            #expect(
                await self.argoErrno {
                    _ = try await one.notify([
                        HMXNotifyQuery(ring: HMXAddress(domain: DomainID(2), port: 22), spaceRequired: 0)
                    ]).get()
                } == .EACCES
            )
            let allowed = try await one.notify([
                HMXNotifyQuery(ring: HMXAddress(domain: DomainID(2), port: 80), spaceRequired: 0)
            ]).get()
            #expect(allowed.first?.flags.contains(.exists) == true)

            // Reload: now allow everything from 2 to 1 and port 500; rings survive.
            let text = TestEmulator.yaml(
                directory: emulator.directory,
                domains: [1, 2],
                macPermissive: true,
                policy: "  - {action: allow, from: d2, to: d1}\n  - {action: allow, from: d1, to: d2, port: 500}"
            )
            try emulator.server.reload(try EmulatorConfig.parse(text, file: "reload.yaml"))
            #expect(try await self.send(two, to: HMXAddress(domain: DomainID(1), port: 9), "back") == 4)
            #expect(try await self.send(one, to: HMXAddress(domain: DomainID(2), port: 500), "five") == 4)
            #expect(
                await self.argoErrno {
                    _ = try await self.send(one, to: HMXAddress(domain: DomainID(2), port: 80), "x")
                } == .EACCES
            )
            var payloads: [[UInt8]] = []
            #expect(try back.receive { payloads.append($0.payloadBytes()) } == 1)
            #expect(payloads == [Array("back".utf8)])
            #expect(try ring80.receive { _ in } == 1)
            #expect(try ring500.receive { _ in } == 1)
            #expect(try ring22.receive { _ in } == 0)
        }
    }

    @Test("hostile clients are dropped without affecting other domains")
    func hostileClients() async throws {
        try await withEmulator(domains: [1, 2, 3]) { emulator in
            let healthy = try await emulator.attach(1)
            let ring = try await healthy.registerRing(port: 1, partner: DomainID(1), length: 4032, failIfExists: true)
                .get()
            // Garbage instead of a hello.
            let garbage = try RawClient(path: emulator.socket(2))
            garbage.write(Array(repeating: 0xFF, count: 64))
            #expect(garbage.readUntilClosed(seconds: 5), "garbage client not dropped")
            // A stalled client: connects and says nothing; dropped after the deadline.
            let stalled = try RawClient(path: emulator.socket(3))
            // Meanwhile the healthy domain keeps working.
            _ = try await self.send(healthy, to: HMXAddress(domain: DomainID(1), port: 1), "ok")
            #expect(try ring.receive { _ in } == 1)
            #expect(stalled.readUntilClosed(seconds: 5), "stalled client not dropped")
            // A client that attaches and then sends half a frame and a bad frame.
            let rude = try await emulator.attach(2)
            _ = rude
            let attachedBadly = try RawClient(path: emulator.socket(3), hello: true)
            attachedBadly.write([48, 0, 0, 0, 1, 0])
            attachedBadly.write(Array(repeating: 0xEE, count: 100))
            #expect(attachedBadly.readUntilClosed(seconds: 5), "client with a bad frame not dropped")
            _ = try await self.send(healthy, to: HMXAddress(domain: DomainID(1), port: 1), "still ok")
            #expect(try ring.receive { _ in } == 1)
            #expect(try await eventually { try await emulator.server.attachedDomains() == [DomainID(1), DomainID(2)] })
        }
    }
}

extension EmulatorLink {
    /// sendv with a caller-chosen source address (to try forging one).
    func rawHypercallSend(source: ArgoAddr, to destination: HMXAddress) async throws -> Int64 {
        let scratch = try await self.allocateScratch(pages: 1).get()
        defer { self.releaseScratch(scratch) }
        ArgoSendAddr(source: source, destination: ArgoAddr(destination)).store(to: scratch.pointer)
        let result = try await self.rawHypercall(
            command: ArgoABI.Op.sendv,
            arg1: scratch.guestAddress,
            arg2: 0,
            arg3: 0,
            arg4: 1
        ).get()
        if result < 0 { throw HMXError.argo(ArgoErrno(rawValue: Int32(-result))) }
        return result
    }

    /// One notify entry, raw, returning the hypercall result and the entry.
    func notifyRaw(_ ring: HMXAddress, spaceRequired: UInt32) async throws -> (Int64, ArgoRingDataEntry) {
        let scratch = try await self.allocateScratch(pages: 1).get()
        defer { self.releaseScratch(scratch) }
        storeLE(scratch.pointer, 0, UInt32(1))
        ArgoRingDataEntry(ring: ArgoAddr(ring), spaceRequired: spaceRequired).store(to: scratch.pointer + 8)
        let result = try await self.rawHypercall(
            command: ArgoABI.Op.notify,
            arg1: scratch.guestAddress,
            arg2: 0,
            arg3: 0,
            arg4: 0
        ).get()
        return (result, ArgoRingDataEntry(loadingFrom: scratch.pointer + 8))
    }
}

/// A plain blocking Unix socket client, for playing a misbehaving domain process.
final class RawClient {
    let fd: Int32

    init(path: String, hello: Bool = false) throws {
        self.fd = chmx_unix_stream_socket()
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(self.fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard result == 0 else { throw HMXError(code: .unavailable, message: "connect failed") }
        if hello {
            let memory = try SharedMemory(creating: 1 << 20, name: "test")
            var fds = [memory.fileDescriptor]
            let helloBytes = LinkWire.Hello(memorySize: UInt64(memory.size)).encoded()
            _ = helloBytes.withUnsafeBytes { chmx_send_with_fds(self.fd, $0.baseAddress, $0.count, &fds, 1) }
            // Read the welcome.
            var welcome = [UInt8](repeating: 0, count: LinkWire.Welcome.size)
            _ = recv(self.fd, &welcome, welcome.count, Int32(MSG_WAITALL))
        }
    }

    deinit { close(self.fd) }

    func write(_ bytes: [UInt8]) {
        _ = bytes.withUnsafeBytes { send(self.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }

    /// True if the peer closes the connection within `seconds`.
    func readUntilClosed(seconds: Int32) -> Bool {
        _ = chmx_set_socket_timeouts(self.fd, seconds * 1000)
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = recv(self.fd, &buffer, buffer.count, 0)
            if count == 0 { return true }
            if count < 0 { return errno == ECONNRESET }
        }
    }
}

@Suite("Xen's ring accounting")
struct RingAccountingTests {
    @Test("re-registration counts toward the 128-ring limit, as in Xen")
    func reRegistrationCounts() async throws {
        try await withEmulator(domains: [1]) { emulator in
            let link = try await emulator.attach(1)
            let first = try await link.registerRing(port: 1, partner: DomainID(1), length: 4032, failIfExists: false)
                .get()
            _ = first
            // Same ring again, in place: Xen counts it a second time.
            _ = try await link.registerRing(port: 1, partner: DomainID(1), length: 4032, failIfExists: false).get()
            #expect(try await emulator.server.withHypervisor { $0.ringCount(of: DomainID(1)) } == 1)
            #expect(try await emulator.server.withHypervisor { $0.ringLimitCount(of: DomainID(1)) } == 2)
            var registered = 0
            while registered < 200 {
                do {
                    _ = try await link.registerRing(
                        port: UInt32(100 + registered),
                        partner: DomainID(1),
                        length: 48,
                        failIfExists: true
                    ).get()
                    registered += 1
                } catch let error as HMXError {
                    #expect(error.errno == .ENOSPC)
                    break
                }
            }
            // 128 counted: the one ring twice, then 126 more.
            #expect(registered == 126)
        }
    }
}

/// Collects tagged send results on the link's loop; `done` succeeds once `expecting`
/// have arrived.
final class ResultSink: HMXSendResultSink {
    struct Entry: Sendable {
        var tag: UInt64
        var result: Result<Int, HMXError>
        var errno: ArgoErrno? {
            if case .failure(let error) = self.result { return error.errno }
            return nil
        }
    }

    let expecting: Int
    let done: EventLoopPromise<[Entry]>
    private(set) var entries: [Entry] = []

    init(expecting: Int, on eventLoop: any EventLoop) {
        self.expecting = expecting
        self.done = eventLoop.makePromise()
    }

    func sendCompleted(tag: UInt64, _ result: Result<Int, HMXError>) {
        self.entries.append(Entry(tag: tag, result: result))
        if self.entries.count == self.expecting { self.done.succeed(self.entries) }
    }
}
