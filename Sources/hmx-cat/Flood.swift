// SPDX-License-Identifier: Apache-2.0
import ArgumentParser
import HMXCommandLine
import HMXCore
import HMXEmulator
import NIOCore

struct Flood: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Benchmark sender: send COUNT messages of SIZE bytes with up to WINDOW in flight.",
        discussion: """
            Messages that find the ring full are retried after the hypervisor's wake-up, so \
            with a window above 1 they may arrive out of order. Use 'send' for ordered data.
            """
    )

    @OptionGroup var link: LinkOptions

    @Argument(help: "Destination DOMID:PORT.")
    var destination: HMXAddress

    @Option(name: .long, help: "Payload bytes per message.")
    var size: Int = 64

    @Option(name: .long, help: "Number of messages.")
    var count: Int = 100_000

    @Option(name: .long, help: "Messages in flight at once.")
    var window: Int = 256

    @Option(name: .long, help: "Wait up to this many seconds for the destination ring to exist.")
    var wait: Double = 0

    func validate() throws {
        guard (0...Int(ArgoABI.maximumMessageSize)).contains(self.size) else {
            throw ValidationError("--size out of range")
        }
        guard self.count > 0, self.window > 0 else { throw ValidationError("--count and --window must be positive") }
    }

    func run() async throws {
        let link = try await self.link.attach()
        // Wait for the ring: notify reports EXISTS once it is registered.
        let deadline = monotonicSeconds() + self.wait
        while true {
            let found = try? await link.notify([HMXNotifyQuery(ring: self.destination, spaceRequired: 0)]).get()
            if found?.first?.flags.contains(.exists) == true || monotonicSeconds() >= deadline { break }
            try await Task.sleep(nanoseconds: 50_000_000)
        }
        var bytes = ByteBufferAllocator().buffer(capacity: self.size)
        for index in 0..<self.size { bytes.writeInteger(UInt8(truncatingIfNeeded: index)) }
        let payload = bytes
        let started = monotonicSeconds()
        let promise = link.eventLoop.makePromise(of: FloodResult.self)
        let (size, count, window, destination) = (self.size, self.count, self.window, self.destination)
        link.eventLoop.execute {
            let flood = FloodSender(
                link: link,
                payload: payload,
                destination: destination,
                count: count,
                window: window,
                done: promise
            )
            link.setEventHandler { [flood = NIOLoopBound(flood, eventLoop: link.eventLoop)] in flood.value.woken() }
            flood.pump()
        }
        let result: FloodResult
        do {
            result = try await promise.futureResult.get()
        } catch {
            throw ExitStatus.fail(error, doing: "flood \(destination)")
        }
        let seconds = max(monotonicSeconds() - started, 1e-9)
        print(
            "sent \(count) messages of \(size) bytes in \(format3(seconds)) s: \(format3(Double(count) / seconds)) msg/s, \(format3(Double(count * size) / seconds / 1e6)) MB/s (\(result.retries) EAGAIN retries)"
        )
        _ = try? await link.close().get()
    }
}

struct FloodResult: Sendable {
    var retries: Int
}

/// Keeps up to `window` sendv calls in flight on the link's loop.
final class FloodSender {
    let link: any HMXLink
    let payload: ByteBuffer
    let destination: HMXAddress
    let count: Int
    let window: Int
    let done: EventLoopPromise<FloodResult>
    private var issued = 0
    private var completed = 0
    private var inFlight = 0
    private var toRetry = 0
    private var retries = 0
    private var isWaitingForSpace = false
    private var isFinished = false

    init(
        link: any HMXLink,
        payload: ByteBuffer,
        destination: HMXAddress,
        count: Int,
        window: Int,
        done: EventLoopPromise<FloodResult>
    ) {
        self.link = link
        self.payload = payload
        self.destination = destination
        self.count = count
        self.window = window
        self.done = done
    }

    func woken() {
        self.isWaitingForSpace = false
        self.pump()
    }

    func pump() {
        while !self.isFinished, !self.isWaitingForSpace, self.inFlight < self.window,
            self.toRetry > 0 || self.issued < self.count
        {
            if self.toRetry > 0 {
                self.toRetry -= 1
            } else {
                self.issued += 1
            }
            self.inFlight += 1
            let loop = self.link.eventLoop
            self.link.send(from: 0, to: self.destination, type: HMXMessageType.datagram, self.payload).whenComplete {
                [bound = NIOLoopBound(self, eventLoop: loop)] result in
                bound.value.finished(result)
            }
        }
    }

    private func finished(_ result: Result<Int, any Error>) {
        self.inFlight -= 1
        switch result {
        case .success:
            self.completed += 1
            if self.completed == self.count {
                self.isFinished = true
                self.done.succeed(FloodResult(retries: self.retries))
                return
            }
        case .failure(let error as HMXError) where error.errno == .EAGAIN:
            self.toRetry += 1
            self.retries += 1
            self.isWaitingForSpace = true
        case .failure(let error):
            if !self.isFinished {
                self.isFinished = true
                self.done.fail(error)
            }
            return
        }
        self.pump()
    }
}

@available(*, unavailable)
extension FloodSender: Sendable {}
