// SPDX-License-Identifier: Apache-2.0
import ArgumentParser
import HMXCore
import NIOCore

/// `hmx-conformance bench`: messages/s and bytes/s through one backend, with the
/// same driver for Xen and the emulator so that their figures compare.
struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure message and byte rates through the backend.",
        discussion: """
            --mode self: register a ring for this domain and flood it from this domain \
            (sender and receiver share the link; the receiver drains on every event). \
            --mode send --to DOMID:PORT floods another domain's ring; --mode receive \
            --from DOMID registers a ring for DOMID and drains it. Senders that find \
            the ring full retry after the hypervisor's wake-up (EAGAIN). Prints one line: \
            'bench: ... msg/s ... MB/s'.
            """
    )

    enum Mode: String, ExpressibleByArgument, CaseIterable {
        case `self`, send, receive
    }

    @OptionGroup var backend: BackendOptions

    @Option(help: "self, send or receive.")
    var mode: Mode = .self

    @Option(help: "Payload bytes per message.")
    var size: Int = 64

    @Option(help: "Number of messages.")
    var count: Int = 100_000

    @Option(help: "Ring data length in bytes (self, receive).")
    var ringLength: UInt32 = ArgoABI.ringLength(fillingPages: 128)

    @Option(help: "Sends in flight at once.")
    var window: Int = 256

    @Option(
        help: "Argo port of the ring (self, receive); decimal or 0x hex.",
        transform: { text in
            guard let port = parseInteger(text, as: UInt32.self) else { throw ValidationError("bad port '\(text)'") }
            return port
        }
    )
    var port: UInt32 = 0x484D_4200

    @Option(
        help: "Destination DOMID:PORT (send).",
        transform: { text in
            guard let address = HMXAddress(parsing: text) else {
                throw ValidationError("expected DOMID:PORT, got '\(text)'")
            }
            return address
        }
    )
    var to: HMXAddress?

    @Option(help: "The sending domain (receive).")
    var from: UInt16?

    @Option(help: "Give up after this many seconds.")
    var timeout: Int64 = 300

    func validate() throws {
        guard (0...Int(ArgoABI.maximumMessageSize)).contains(self.size) else {
            throw ValidationError("--size out of range")
        }
        guard self.count > 0, self.window > 0, self.timeout > 0 else {
            throw ValidationError("--count, --window and --timeout must be positive")
        }
        switch self.mode {
        case .self: break
        case .send: guard self.to != nil else { throw ValidationError("--mode send needs --to DOMID:PORT") }
        case .receive: guard self.from != nil else { throw ValidationError("--mode receive needs --from DOMID") }
        }
        if self.mode != .send {
            guard UInt32(self.size) <= ArgoABI.maximumPayload(ringLength: self.ringLength) else {
                throw ValidationError("--size \(self.size) does not fit a ring of \(self.ringLength) bytes")
            }
        }
    }

    func run() async throws {
        let links = try await self.backend.open(peer: false)
        let link = links.primary
        writeLine("backend: \(links.description)")
        let result: BenchResult
        do {
            result = try await self.measure(link)
        } catch {
            writeLine("bench: FAILED: \(error)")
            await links.close()
            throw ExitCode.failure
        }
        await links.close()
        writeLine(
            "bench: backend=\(self.backend.backend.rawValue) mode=\(self.mode.rawValue) size=\(self.size) "
                + "messages=\(result.messages) seconds=\(fixed(result.seconds, 3)) "
                + "rate=\(fixed(Double(result.messages) / result.seconds, 0)) msg/s "
                + "throughput=\(fixed(Double(result.bytes) / result.seconds / 1e6, 2)) MB/s "
                + "eagain=\(result.retries)"
        )
    }

    private func measure(_ link: any HMXLink) async throws -> BenchResult {
        let me = link.localDomain
        let ring: HMXRing?
        let destination: HMXAddress?
        switch self.mode {
        case .self:
            ring = try await link.registerRing(
                port: self.port,
                partner: me,
                length: self.ringLength,
                failIfExists: false
            ).get()
            destination = HMXAddress(domain: me, port: self.port)
        case .receive:
            ring = try await Self.registerWhenPartnerExists(
                link,
                port: self.port,
                partner: DomainID(self.from!),
                length: self.ringLength,
                seconds: Double(self.timeout)
            )
            destination = nil
            writeLine(
                "bench: ring \(me):\(self.port) registered for domain \(self.from!), waiting for \(self.count) messages"
            )
        case .send:
            ring = nil
            destination = self.to!
            try await Self.waitForRing(self.to!, link: link, seconds: Double(self.timeout))
        }
        var bytes = ByteBufferAllocator().buffer(capacity: self.size)
        for index in 0..<self.size { bytes.writeInteger(UInt8(truncatingIfNeeded: index)) }
        let promise = link.eventLoop.makePromise(of: BenchResult.self)
        let (payload, count, window, size, timeout) = (bytes, self.count, self.window, self.size, self.timeout)
        try await link.eventLoop.submit {
            let driver = BenchDriver(
                link: link,
                ring: ring,
                destination: destination,
                payload: payload,
                expectedSize: size,
                count: count,
                window: window,
                done: promise
            )
            let bound = NIOLoopBound(driver, eventLoop: link.eventLoop)
            link.setEventHandler { bound.value.event() }
            let timer = link.eventLoop.scheduleTask(in: .seconds(timeout)) {
                bound.value.fail(BenchFailure("not done after \(timeout) s: \(bound.value.progress)"))
            }
            promise.futureResult.whenComplete { _ in timer.cancel() }
            driver.start()
        }.get()
        defer { link.setEventHandler {} }
        let result = try await promise.futureResult.get()
        if let ring { _ = try? await link.unregisterRing(ring).get() }
        return result
    }

    /// Registers the ring, retrying while the partner domain does not exist yet (ESRCH;
    /// with the emulator a domain exists while its process is attached). Bounded.
    private static func registerWhenPartnerExists(
        _ link: any HMXLink,
        port: UInt32,
        partner: DomainID,
        length: UInt32,
        seconds: Double
    ) async throws -> HMXRing {
        let deadline = monotonicSeconds() + seconds
        while true {
            do {
                return try await link.registerRing(port: port, partner: partner, length: length, failIfExists: false)
                    .get()
            } catch let error as HMXError where error.errno == .ESRCH && monotonicSeconds() < deadline {
                try await Task.sleep(nanoseconds: 50_000_000)
            }
        }
    }

    /// Polls notify until the destination ring exists (bounded).
    private static func waitForRing(_ ring: HMXAddress, link: any HMXLink, seconds: Double) async throws {
        let deadline = monotonicSeconds() + seconds
        while true {
            let found = try? await link.notify([HMXNotifyQuery(ring: ring, spaceRequired: 0)]).get()
            if found?.first?.flags.contains(.exists) == true { return }
            guard monotonicSeconds() < deadline else {
                throw BenchFailure("ring \(ring) did not appear within \(Int(seconds)) s")
            }
            try await Task.sleep(nanoseconds: 50_000_000)
        }
    }
}

struct BenchFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

struct BenchResult: Sendable {
    var messages: Int
    var bytes: Int
    var seconds: Double
    var retries: Int
}

/// Sends and/or drains on the link's event loop.
///
/// Sending keeps up to `window` sendv calls in flight. A call may complete inline
/// (XenLink's hypercalls are synchronous on the loop), so ``pump()`` is not
/// re-entered: completions only update counters and the running loop continues.
/// Receiving drains the ring on every event, then issues a NULL notify so that a
/// sender waiting for space (EAGAIN) is woken by the hypervisor.
final class BenchDriver {
    let link: any HMXLink
    let ring: HMXRing?
    let destination: HMXAddress?
    let payload: ByteBuffer
    let expectedSize: Int
    let count: Int
    let window: Int
    let done: EventLoopPromise<BenchResult>
    private var started: Double?
    private var issued = 0
    private var completed = 0
    private var inFlight = 0
    private var toRetry = 0
    private var retries = 0
    private var received = 0
    private var receivedBytes = 0
    private var isWaitingForSpace = false
    /// Events seen so far; a send remembers the count at the time it was issued.
    private var events = 0
    private var isPumping = false
    private var isFinished = false

    init(
        link: any HMXLink,
        ring: HMXRing?,
        destination: HMXAddress?,
        payload: ByteBuffer,
        expectedSize: Int,
        count: Int,
        window: Int,
        done: EventLoopPromise<BenchResult>
    ) {
        self.link = link
        self.ring = ring
        self.destination = destination
        self.payload = payload
        self.expectedSize = expectedSize
        self.count = count
        self.window = window
        self.done = done
    }

    var progress: String {
        "sent \(self.completed), received \(self.received) of \(self.count), \(self.retries) EAGAIN"
    }

    func start() {
        if self.destination != nil {
            self.started = monotonicSeconds()
            self.pump()
        } else {
            self.drain()
        }
    }

    func event() {
        self.events += 1
        guard !self.isFinished else { return }
        self.drain()
        if self.destination != nil {
            self.isWaitingForSpace = false
            self.pump()
        }
    }

    func fail(_ error: any Error) {
        guard !self.isFinished else { return }
        self.isFinished = true
        self.done.fail(error)
    }

    private func drain() {
        guard let ring = self.ring, !self.isFinished else { return }
        var bad: Int?
        let consumed: Int
        do {
            consumed = try ring.receive { message in
                if message.payloadLength != self.expectedSize { bad = message.payloadLength }
                self.received += 1
                self.receivedBytes += message.payloadLength
            }
        } catch {
            self.fail(error)
            return
        }
        if let bad {
            self.fail(BenchFailure("received a \(bad)-byte message, expected \(self.expectedSize)"))
            return
        }
        guard consumed > 0 else { return }
        if self.started == nil { self.started = monotonicSeconds() }
        // Room was made: wake a sender waiting for it (possibly ourselves).
        self.link.notify([]).whenFailure { [bound = NIOLoopBound(self, eventLoop: self.link.eventLoop)] error in
            bound.value.fail(error)
        }
        self.finishIfDone()
    }

    private func pump() {
        guard !self.isPumping, let destination = self.destination else { return }
        self.isPumping = true
        defer { self.isPumping = false }
        let loop = self.link.eventLoop
        while !self.isFinished, !self.isWaitingForSpace, self.inFlight < self.window,
            self.toRetry > 0 || self.issued < self.count
        {
            if self.toRetry > 0 {
                self.toRetry -= 1
            } else {
                self.issued += 1
            }
            self.inFlight += 1
            let epoch = self.events
            self.link.send(from: 0, to: destination, type: HMXMessageType.datagram, self.payload).whenComplete {
                [bound = NIOLoopBound(self, eventLoop: loop)] result in
                bound.value.sent(result, issuedAtEvent: epoch)
            }
        }
    }

    private func sent(_ result: Result<Int, any Error>, issuedAtEvent epoch: Int) {
        self.inFlight -= 1
        switch result {
        case .success:
            self.completed += 1
        case .failure(let error as HMXError) where error.errno == .EAGAIN:
            self.toRetry += 1
            self.retries += 1
            // The hypervisor queued a wake-up when it refused this send. If an event came
            // in after the send was issued, it may have been that very wake-up (the answer
            // arrives later than the event with a pipelined backend): retry at once rather
            // than wait for an event that already happened.
            if self.events == epoch { self.isWaitingForSpace = true }
        case .failure(let error):
            self.fail(error)
            return
        }
        self.finishIfDone()
        self.pump()
    }

    private func finishIfDone() {
        guard !self.isFinished, let started = self.started else { return }
        let sendingDone = self.destination == nil || self.completed == self.count
        let receivingDone = self.ring == nil || self.received >= self.count
        guard sendingDone, receivingDone else { return }
        self.isFinished = true
        let seconds = max(monotonicSeconds() - started, 1e-9)
        self.done.succeed(
            BenchResult(
                messages: self.count,
                bytes: self.count * self.expectedSize,
                seconds: seconds,
                retries: self.retries
            )
        )
    }
}

@available(*, unavailable)
extension BenchDriver: Sendable {}
