// SPDX-License-Identifier: Apache-2.0
import CHMXShims
import HMXCore
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

/// An ``HMXLink`` to the emulator: this process attaches as the domain whose socket
/// it connects to.
///
/// The process brings its own memory (a sealed memfd, "guest RAM") and shares it with
/// the emulator only. Ring pages and hypercall arguments live in it, and hypercalls
/// carry guest addresses into it, exactly as a Xen guest passes pointers to Xen:
///
/// ```
///  guest address 0      4 KiB              4 KiB + staging         end
///  | NULL page (invalid) | staging (FIFO args) | ring pages (first fit) |
/// ```
///
/// Requests are pipelined: several hypercalls may be in flight; each completes in
/// order with its own result, as if issued one after another.
public final class EmulatorLink: HMXRawHypercalls, @unchecked Sendable {
    // @unchecked: all mutable state lives in the LinkState behind `hypercalls`, which is
    // only touched on `eventLoop` (NIOLoopBound checks this); the other stored
    // properties are immutable.

    public struct Configuration: Sendable {
        /// Bytes for hypercall arguments and payloads in flight.
        public var stagingBytes: Int
        /// Bytes available for ring pages.
        public var ringMemoryBytes: Int
        /// Requests that may wait for staging space before sendv fails locally.
        public var maximumQueuedRequests: Int

        public init(stagingBytes: Int = 4 << 20, ringMemoryBytes: Int = 28 << 20, maximumQueuedRequests: Int = 16384) {
            self.stagingBytes = stagingBytes
            self.ringMemoryBytes = ringMemoryBytes
            self.maximumQueuedRequests = maximumQueuedRequests
        }
    }

    public let eventLoop: any EventLoop
    public let localDomain: DomainID
    /// This domain's memory (exposed for conformance tests that craft raw arguments).
    public let memory: SharedMemory
    let channel: any Channel
    /// Takes every operation to the loop-confined ``LinkState``.
    let hypercalls: LoopBoundHypercalls<LinkState>

    public var closeFuture: EventLoopFuture<Void> { self.channel.closeFuture }

    init(channel: any Channel, domain: DomainID, memory: SharedMemory, hypercalls: LoopBoundHypercalls<LinkState>) {
        self.channel = channel
        self.eventLoop = channel.eventLoop
        self.localDomain = domain
        self.memory = memory
        self.hypercalls = hypercalls
    }

    /// Connects to the emulator socket of a domain and attaches as that domain.
    /// - Throws: ``HMXError`` with code `.attachRefused` (and the emulator's reason),
    ///   or `.unavailable` if the socket cannot be reached.
    public static func attach(
        socketPath: String,
        configuration: Configuration = Configuration(),
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) async throws -> EmulatorLink {
        let staging = (configuration.stagingBytes + 4095) & ~4095
        let rings = (configuration.ringMemoryBytes + 4095) & ~4095
        let memory = try SharedMemory(creating: ArgoABI.pageSize + staging + rings, name: "hmx-domain")
        let fd = try await NIOThreadPool.singleton.runIfActive {
            try Self.connectAndHello(socketPath: socketPath, memory: memory)
        }
        let eventLoop = group.next()
        let welcome = eventLoop.makePromise(of: LinkWire.Welcome.self)
        let channel: any Channel
        do {
            channel = try await ClientBootstrap(group: eventLoop)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(LinkClientHandler(welcome: welcome))
                    }
                }
                .withConnectedSocket(fd)
                .get()
        } catch {
            welcome.fail(error)
            throw error
        }
        let answer = try await welcome.futureResult.get()
        guard answer.status == .accepted else {
            channel.close(promise: nil)
            throw HMXError(code: .attachRefused, message: "\(socketPath): \(answer.status)")
        }
        let link = try await eventLoop.submit { () -> EmulatorLink in
            let state = LinkState(
                channel: channel,
                domain: answer.domain,
                memory: memory,
                stagingBase: ArgoABI.pageSize,
                stagingSize: staging,
                maximumQueued: configuration.maximumQueuedRequests
            )
            let handler = try channel.pipeline.syncOperations.handler(type: LinkClientHandler.self)
            handler.state = state
            return EmulatorLink(
                channel: channel,
                domain: answer.domain,
                memory: memory,
                hypercalls: LoopBoundHypercalls(state, eventLoop: eventLoop)
            )
        }.get()
        return link
    }

    private static func connectAndHello(socketPath: String, memory: SharedMemory) throws -> Int32 {
        let fd = chmx_unix_stream_socket()
        guard fd >= 0 else { throw HMXError(code: .unavailable, message: "socket() failed: errno \(errno)") }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let pathBytes = Array(socketPath.utf8)
        guard pathBytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            Glibc.close(fd)
            throw HMXError(code: .unavailable, message: "socket path too long: \(socketPath)")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: pathBytes) }
        let result = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard result == 0 else {
            let error = errno
            Glibc.close(fd)
            throw HMXError(
                code: .unavailable,
                message: "cannot reach the emulator at \(socketPath): \(String(cString: strerror(error)))"
            )
        }
        let hello = LinkWire.Hello(memorySize: UInt64(memory.size)).encoded()
        var fds = [memory.fileDescriptor]
        let sent = hello.withUnsafeBytes { raw in chmx_send_with_fds(fd, raw.baseAddress, raw.count, &fds, 1) }
        guard sent == hello.count else {
            Glibc.close(fd)
            throw HMXError(code: .unavailable, message: "cannot send the attach request: errno \(errno)")
        }
        return fd
    }

    // MARK: - HMXLink

    public func registerRing(
        port: HMXPort,
        partner: DomainID,
        length: UInt32,
        failIfExists: Bool
    ) -> EventLoopFuture<HMXRing> {
        self.hypercalls.registerRing(port: port, partner: partner, length: length, failIfExists: failIfExists)
    }

    public func unregisterRing(_ ring: HMXRing) -> EventLoopFuture<Void> {
        self.hypercalls.unregisterRing(ring)
    }

    public func sendv(
        from port: HMXPort,
        to destination: HMXAddress,
        type: UInt32,
        iovecs: [ByteBuffer]
    ) -> EventLoopFuture<Int> {
        self.hypercalls.sendv(from: port, to: destination, type: type, iovecs: iovecs, resultMayBeLate: false)
    }

    public func sendv(
        from port: HMXPort,
        to destination: HMXAddress,
        type: UInt32,
        iovecs: [ByteBuffer],
        resultMayBeLate: Bool
    )
        -> EventLoopFuture<Int>
    {
        self.hypercalls.sendv(from: port, to: destination, type: type, iovecs: iovecs, resultMayBeLate: resultMayBeLate)
    }

    public func sendv(
        from port: HMXPort,
        to destination: HMXAddress,
        type: UInt32,
        iovecs: [ByteBuffer],
        resultMayBeLate: Bool,
        tag: UInt64,
        resultsTo sink: any HMXSendResultSink
    ) {
        self.hypercalls.sendv(
            from: port,
            to: destination,
            type: type,
            iovecs: iovecs,
            resultMayBeLate: resultMayBeLate,
            tag: tag,
            resultsTo: sink
        )
    }

    public func notify(_ queries: [HMXNotifyQuery]) -> EventLoopFuture<[HMXNotifyResult]> {
        self.hypercalls.notify(queries)
    }

    public func setEventHandler(_ handler: @escaping @Sendable () -> Void) {
        self.hypercalls.setEventHandler(handler)
    }

    public func close() -> EventLoopFuture<Void> {
        self.channel.close().recover { _ in }
    }

    // MARK: - Raw access for conformance tests

    /// Issues an Argo hypercall with raw arguments (guest addresses in ``memory``).
    public func rawHypercall(
        command: UInt32,
        arg1: UInt64,
        arg2: UInt64,
        arg3: UInt64,
        arg4: UInt64
    ) -> EventLoopFuture<Int64> {
        self.hypercalls.onLoop { state in state.raw(command: command, arg1: arg1, arg2: arg2, arg3: arg3, arg4: arg4) }
    }

    public func allocateScratch(pages: Int) -> EventLoopFuture<HMXScratch> {
        self.hypercalls.onLoop { state in
            guard let first = state.pages.allocate(pages) else {
                return state.channel.eventLoop.makeFailedFuture(
                    HMXError(code: .resourceExhausted, message: "no \(pages) free pages in domain memory")
                )
            }
            let pointer = state.memory.base + first * ArgoABI.pageSize
            memset(pointer, 0, pages * ArgoABI.pageSize)
            return state.channel.eventLoop.makeSucceededFuture(
                HMXScratch(guestAddress: UInt64(first * ArgoABI.pageSize), pointer: pointer, pages: pages)
            )
        }
    }

    public func releaseScratch(_ scratch: HMXScratch) {
        let first = Int(scratch.guestAddress) / ArgoABI.pageSize
        let pages = scratch.pages
        _ = self.hypercalls.onLoop { state in
            state.pages.release(start: first, count: pages)
            return state.channel.eventLoop.makeSucceededVoidFuture()
        }
    }

    public func frameNumbers(of scratch: HMXScratch) -> [UInt64] {
        let first = scratch.guestAddress / UInt64(ArgoABI.pageSize)
        return (0..<UInt64(scratch.pages)).map { first + $0 }
    }

    /// The NULL page: never valid guest memory.
    public var invalidGuestAddress: UInt64 { 16 }
}
