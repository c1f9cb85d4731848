// SPDX-License-Identifier: Apache-2.0
import ArgumentParser
import HMXCommandLine
import HMXCore
import HMXEmulator
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

struct Send: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Send standard input (or --message) to DOMID:PORT as messages, in order.",
        discussion: """
            Each message is sent only after the previous one was accepted, so messages arrive \
            in order. A full ring is flow control: the sender waits for the receiver to make \
            room (Argo's EAGAIN and wake-up), then retries.
            """
    )

    @OptionGroup var link: LinkOptions

    @Argument(help: "Destination DOMID:PORT.")
    var destination: HMXAddress

    @Option(name: .long, help: "Source port stamped in the header (Argo does not authenticate it).")
    var fromPort: UInt32 = 0

    @Option(name: .long, help: "Message type (default: OpenXT's datagram type 0x6447724d).")
    var type: String = "0x6447724d"

    @Option(name: .long, help: "Send this text as one message instead of reading standard input.")
    var message: String?

    @Flag(name: .long, help: "Send each line of standard input as one message (without the newline).")
    var lines = false

    @Option(name: .long, help: "Largest message read from standard input, in bytes.")
    var chunk: Int = 65536

    @Option(name: .long, help: "Give up if the destination stays full this many seconds (0 = wait forever).")
    var timeout: Double = 0

    @Option(name: .long, help: "Retry this many seconds while the destination domain or ring does not exist yet.")
    var wait: Double = 0

    func validate() throws {
        guard parseInteger(self.type, as: UInt32.self) != nil else {
            throw ValidationError("--type must be a 32-bit number")
        }
        guard (1...Int(ArgoABI.maximumMessageSize)).contains(self.chunk) else {
            throw ValidationError("--chunk must be 1...\(ArgoABI.maximumMessageSize)")
        }
    }

    func run() async throws {
        let messageType = parseInteger(self.type, as: UInt32.self)!
        let link = try await self.link.attach()
        var sender = OrderedSender(
            link: link,
            from: self.fromPort,
            to: self.destination,
            type: messageType,
            timeout: self.timeout,
            waitForDestination: self.wait
        )
        defer { _ = link.close() }
        if let message = self.message {
            try await sender.send(ByteBuffer(string: message))
            return
        }
        var reader = StandardInputReader(chunk: self.chunk)
        var pending = ByteBuffer()
        while let bytes = try await reader.next() {
            if !self.lines {
                try await sender.send(bytes)
                continue
            }
            pending.writeImmutableBuffer(bytes)
            while let newline = pending.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) {
                let length = newline - pending.readerIndex
                let line = pending.readSlice(length: length)!
                pending.moveReaderIndex(forwardBy: 1)
                try await sender.send(line)
            }
            guard pending.readableBytes <= self.chunk else {
                printError("hmx-cat: a line is longer than --chunk \(self.chunk) bytes")
                throw ExitCode(1)
            }
        }
        if self.lines, pending.readableBytes > 0 {
            try await sender.send(pending)
        }
    }
}

/// Sends messages one at a time, waiting out full rings.
struct OrderedSender {
    let link: any HMXLink
    let from: HMXPort
    let to: HMXAddress
    let type: UInt32
    let timeout: Double
    /// Seconds to keep retrying while the destination does not exist (first send only).
    private var waitForDestination: Double
    private var wakeups: AsyncStream<Void>.Iterator
    private let continuation: AsyncStream<Void>.Continuation

    init(
        link: any HMXLink,
        from: HMXPort,
        to: HMXAddress,
        type: UInt32,
        timeout: Double,
        waitForDestination: Double = 0
    ) {
        self.link = link
        self.from = from
        self.to = to
        self.type = type
        self.timeout = timeout
        self.waitForDestination = waitForDestination
        // One stream for both the link's events and our own deadline ticks.
        let (stream, continuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        link.setEventHandler { continuation.yield() }
        link.closeFuture.whenComplete { _ in continuation.finish() }
        self.wakeups = stream.makeAsyncIterator()
        self.continuation = continuation
    }

    mutating func send(_ payload: ByteBuffer) async throws {
        let started = monotonicSeconds()
        while true {
            do {
                _ = try await self.link.send(from: self.from, to: self.to, type: self.type, payload).get()
                self.waitForDestination = 0
                return
            } catch let error as HMXError
                where (error.errno == .ESRCH || error.errno == .ECONNREFUSED)
                && monotonicSeconds() - started < self.waitForDestination
            {
                try await Task.sleep(nanoseconds: 100_000_000)
            } catch let error as HMXError where error.errno == .EAGAIN {
                // The hypervisor queued a wake-up for us: wait for the event, then retry.
                var deadlineTimer: Scheduled<Void>?
                if self.timeout > 0 {
                    let remaining = started + self.timeout - monotonicSeconds()
                    if remaining <= 0 {
                        throw ExitStatus.fail(error, doing: "send to \(self.to) (still full after \(self.timeout) s)")
                    }
                    let continuation = self.continuation
                    deadlineTimer = self.link.eventLoop.scheduleTask(in: .nanoseconds(Int64(remaining * 1e9))) {
                        continuation.yield()
                    }
                }
                let woke = await self.wakeups.next() != nil
                deadlineTimer?.cancel()
                guard woke else { throw ExitCode(ExitStatus.linkLost) }
            } catch {
                throw ExitStatus.fail(error, doing: "send to \(self.to)")
            }
        }
    }
}

/// Reads standard input in chunks on a thread-pool thread, so the event loop never blocks.
struct StandardInputReader {
    let chunk: Int
    private var isFinished = false

    init(chunk: Int) {
        self.chunk = chunk
    }

    mutating func next() async throws -> ByteBuffer? {
        if self.isFinished { return nil }
        let size = self.chunk
        let buffer = try await NIOThreadPool.singleton.runIfActive { () -> ByteBuffer in
            var buffer = ByteBufferAllocator().buffer(capacity: size)
            while true {
                let count = buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: size) { raw in
                    let result = read(0, raw.baseAddress, size)
                    return result < 0 ? (errno == EINTR ? -2 : -1) : result
                }
                if count == -2 { continue }
                return buffer
            }
        }
        if buffer.readableBytes == 0 {
            self.isFinished = true
            return nil
        }
        return buffer
    }
}
