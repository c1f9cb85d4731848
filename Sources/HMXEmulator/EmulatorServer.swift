// SPDX-License-Identifier: Apache-2.0
import CHMXShims
import HMXCore
import Logging
import NIOCore
import NIOPosix
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The emulator daemon: listens on one Unix socket per configured domain, attaches
/// the process that connects there as that domain, and runs the hypervisor.
///
/// A process's domain id comes only from *which* socket it connected to (and, if
/// configured, its uid as reported by the kernel), never from anything it sends.
///
/// ```
///  domain process ──connect──▶ /run/hmx/web.sock ──(accept thread)──▶ handshake
///     hello + sealed memfd ──▶ check uid, memory ──▶ NIO channel on the emulator loop
///     ◀── welcome {domain id}        hypercall frames ⇄ results, events
/// ```
public final class EmulatorServer: Sendable {
    /// Handshake deadline: a process that connects and says nothing is dropped.
    public static let handshakeTimeoutMilliseconds: Int32 = 2000

    private struct Listener {
        var domain: EmulatorConfig.DomainEntry
        var fd: Int32
    }

    private struct State {
        var config: EmulatorConfig
        var listeners: [UInt16: Listener] = [:]
        var isRunning = false
        var isStopped = false
    }

    private let group: MultiThreadedEventLoopGroup
    private let threadPool: NIOThreadPool
    private let core: NIOLoopBound<EmulatorCore>
    private let state: Mutex<State>
    private let wakePipe: (read: Int32, write: Int32)
    private let logger: Logger

    /// The event loop that runs the hypervisor.
    public var eventLoop: any EventLoop { self.core.eventLoop }

    public init(config: EmulatorConfig, logger: Logger) throws {
        self.logger = logger
        self.group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        self.threadPool = NIOThreadPool(numberOfThreads: 4)
        self.threadPool.start()
        let loop = self.group.next()
        self.core = try loop.submit {
            let core = EmulatorCore(settings: config.settings, eventLoop: loop, logger: logger)
            core.hypervisor.domainNames = Dictionary(uniqueKeysWithValues: config.domains.map { ($0.id.rawValue, $0.name) })
            return NIOLoopBound(core, eventLoop: loop)
        }.wait()
        var fds: [Int32] = [-1, -1]
        guard chmx_pipe_cloexec_nonblock(&fds) == 0 else {
            throw HMXError(code: .resourceExhausted, message: "pipe2 failed: errno \(errno)")
        }
        self.wakePipe = (fds[0], fds[1])
        self.state = Mutex(State(config: config))
    }

    /// Binds every domain's socket and starts accepting. Fails if a socket cannot be bound.
    public func start() throws {
        let config = self.state.withLock { $0.config }
        var bound: [UInt16: Listener] = [:]
        do {
            for domain in config.domains {
                bound[domain.id.rawValue] = Listener(domain: domain, fd: try Self.bindListener(domain))
            }
        } catch {
            for listener in bound.values { Self.closeListener(listener) }
            throw error
        }
        self.state.withLock {
            $0.listeners = bound
            $0.isRunning = true
        }
        self.threadPool.submit { [self] _ in self.acceptLoop() }
        self.logger.info(
            "emulator started",
            metadata: [
                "domains": "\(config.domains.map { "\($0.id)=\($0.name)@\($0.socketPath)" }.joined(separator: " "))",
                "mac_permissive": "\(config.wildcardRingsAllowed)",
                "policy.rules": "\(config.policy.rules.count)",
            ]
        )
    }

    /// Applies a new configuration: hypervisor settings and policy at once; domains
    /// that were removed or changed lose their listener and are destroyed; new
    /// domains get a listener. Rings of unchanged domains are untouched.
    public func reload(_ newConfig: EmulatorConfig) throws {
        let (removed, added) = self.state.withLock { state -> ([Listener], [EmulatorConfig.DomainEntry]) in
            var removed: [Listener] = []
            for (id, listener) in state.listeners where !newConfig.domains.contains(listener.domain) {
                removed.append(listener)
                state.listeners[id] = nil
            }
            let added = newConfig.domains.filter { domain in state.listeners[domain.id.rawValue] == nil }
            state.config = newConfig
            return (removed, added)
        }
        for listener in removed { Self.closeListener(listener) }
        var failure: (any Error)?
        for domain in added {
            do {
                let fd = try Self.bindListener(domain)
                self.state.withLock { $0.listeners[domain.id.rawValue] = Listener(domain: domain, fd: fd) }
            } catch {
                failure = failure ?? error
            }
        }
        let core = self.core
        let names = Dictionary(uniqueKeysWithValues: newConfig.domains.map { ($0.id.rawValue, $0.name) })
        try self.eventLoop.submit {
            let core = core.value
            core.hypervisor.settings = newConfig.settings
            core.hypervisor.domainNames = names
            core.hypervisor.resetDenialLog()
            for listener in removed { core.disconnect(listener.domain.id) }
        }.wait()
        self.wake()
        self.logger.info(
            "configuration reloaded",
            metadata: [
                "domains.added": "\(added.map(\.name))",
                "domains.removed": "\(removed.map(\.domain.name))",
                "policy.rules": "\(newConfig.policy.rules.count)",
            ]
        )
        if let failure { throw failure }
    }

    /// Stops accepting, detaches every domain and stops the event loop.
    public func shutdown() async {
        let listeners = self.state.withLock { state -> [Listener] in
            state.isRunning = false
            state.isStopped = true
            defer { state.listeners.removeAll() }
            return Array(state.listeners.values)
        }
        self.wake()
        for listener in listeners { Self.closeListener(listener) }
        let core = self.core
        try? await self.eventLoop.submit { core.value.disconnectAll() }.get()
        try? await self.threadPool.shutdownGracefully()
        try? await self.group.shutdownGracefully()
        close(self.wakePipe.read)
        close(self.wakePipe.write)
        self.logger.info("emulator stopped")
    }

    /// Domains that currently have a process attached.
    public func attachedDomains() async throws -> [DomainID] {
        let core = self.core
        return try await self.eventLoop.submit { core.value.attachedDomains }.get()
    }

    /// Runs `body` on the emulator's loop with its hypervisor (for diagnostics and tests).
    public func withHypervisor<T: Sendable>(_ body: @escaping @Sendable (ArgoHypervisor) -> T) async throws -> T {
        let core = self.core
        return try await self.eventLoop.submit { body(core.value.hypervisor) }.get()
    }

    // MARK: - Accepting

    private func wake() {
        var byte: UInt8 = 1
        _ = write(self.wakePipe.write, &byte, 1)
    }

    private func acceptLoop() {
        while true {
            let listeners = self.state.withLock { state -> [Listener]? in
                state.isRunning ? Array(state.listeners.values) : nil
            }
            guard let listeners else { return }
            var polls = [pollfd(fd: self.wakePipe.read, events: Int16(POLLIN), revents: 0)]
            polls += listeners.map { pollfd(fd: $0.fd, events: Int16(POLLIN), revents: 0) }
            let ready = poll(&polls, nfds_t(polls.count), -1)
            if ready < 0 {
                if errno == EINTR { continue }
                self.logger.error("accept loop failed", metadata: ["errno": "\(errno)"])
                return
            }
            if polls[0].revents != 0 {
                var drain = [UInt8](repeating: 0, count: 64)
                _ = read(self.wakePipe.read, &drain, drain.count)
                continue
            }
            for (index, listener) in listeners.enumerated() where polls[index + 1].revents != 0 {
                // The listener may have been closed by a reload in the meantime.
                let stillOpen = self.state.withLock { $0.listeners[listener.domain.id.rawValue]?.fd == listener.fd }
                guard stillOpen else { continue }
                let client = chmx_accept_cloexec(listener.fd)
                if client < 0 { continue }
                let domain = listener.domain
                self.threadPool.submit { [self] _ in self.handshake(client, domain: domain) }
            }
        }
    }

    /// Blocking attach handshake, on a pool thread, bounded by a timeout.
    private func handshake(_ fd: Int32, domain: EmulatorConfig.DomainEntry) {
        var logger = self.logger
        logger[metadataKey: "domain"] = "\(domain.id) (\(domain.name))"
        func refuse(_ status: LinkWire.Welcome.Status, _ detail: String, drain: Bool = false) {
            logger.warning("attach refused", metadata: ["reason": "\(status)", "detail": "\(detail)"])
            if drain {
                // Read the hello first: closing a Unix socket with unread data resets it,
                // and the process should get to read why it was refused.
                var scratch = [UInt8](repeating: 0, count: LinkWire.Hello.size)
                var fds: [Int32] = [-1]
                var received: Int32 = 0
                _ = scratch.withUnsafeMutableBytes { raw in
                    chmx_recv_with_fds(fd, raw.baseAddress, raw.count, &fds, 1, &received)
                }
                if received == 1 { close(fds[0]) }
            }
            let bytes = LinkWire.Welcome(status: status, domain: domain.id).encoded()
            _ = bytes.withUnsafeBytes { raw in send(fd, raw.baseAddress, raw.count, Int32(MSG_NOSIGNAL)) }
            close(fd)
        }
        _ = chmx_set_socket_timeouts(fd, Self.handshakeTimeoutMilliseconds)
        var pid: pid_t = 0
        var uid: uid_t = 0
        var gid: gid_t = 0
        guard chmx_peer_credentials(fd, &pid, &uid, &gid) == 0 else {
            refuse(.credentialsRejected, "peer credentials unavailable")
            return
        }
        if let required = domain.uid, required != uid {
            refuse(.credentialsRejected, "uid \(uid) is not the configured uid \(required)", drain: true)
            return
        }
        var bytes = [UInt8](repeating: 0, count: LinkWire.Hello.size)
        var fds: [Int32] = [-1]
        var received: Int32 = 0
        let count = bytes.withUnsafeMutableBytes { raw in
            chmx_recv_with_fds(fd, raw.baseAddress, raw.count, &fds, 1, &received)
        }
        guard count == LinkWire.Hello.size, received == 1,
            let hello = bytes.withUnsafeBytes({ LinkWire.Hello(parsing: $0) })
        else {
            if received == 1 { close(fds[0]) }
            refuse(.malformedHello, count < 0 ? "no hello within the deadline (errno \(errno))" : "bad hello")
            return
        }
        guard LinkWire.supportedVersions.contains(hello.version) else {
            close(fds[0])
            refuse(.unsupportedVersion, "version \(hello.version)")
            return
        }
        guard hello.memorySize <= UInt64(domain.maximumMemory) else {
            close(fds[0])
            refuse(.badMemory, "\(hello.memorySize) bytes exceeds the limit of \(domain.maximumMemory)")
            return
        }
        let memory: SharedMemory
        do {
            memory = try SharedMemory(adopting: fds[0], expectedSize: Int(hello.memorySize))
        } catch {
            refuse(.badMemory, "\(error)")
            return
        }
        _ = chmx_set_socket_timeouts(fd, 0)
        logger[metadataKey: "peer.pid"] = "\(pid)"
        logger[metadataKey: "peer.uid"] = "\(uid)"
        let core = self.core
        let handlerLogger = logger
        let failureLogger = logger
        let channel = ClientBootstrap(group: self.eventLoop)
            .channelOption(.allowRemoteHalfClosure, value: false)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let handler = DomainConnectionHandler(domain: domain, memory: memory, core: core.value, logger: handlerLogger)
                    try channel.pipeline.syncOperations.addHandler(handler)
                }
            }
            .withConnectedSocket(fd)
        channel.whenFailure { error in
            failureLogger.warning("cannot register attached domain's socket", metadata: ["error": "\(error)"])
        }
    }

    // MARK: - Sockets

    private static func bindListener(_ domain: EmulatorConfig.DomainEntry) throws -> Int32 {
        let path = domain.socketPath
        // Replace a stale socket from an earlier run, but never another kind of file.
        var status = stat()
        if lstat(path, &status) == 0 {
            guard (status.st_mode & S_IFMT) == S_IFSOCK else {
                throw HMXError(code: .unavailable, message: "\(path) exists and is not a socket")
            }
            unlink(path)
        }
        let fd = chmx_unix_stream_socket()
        guard fd >= 0 else { throw HMXError(code: .unavailable, message: "socket() failed: errno \(errno)") }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let pathBytes = Array(path.utf8)
        guard pathBytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            close(fd)
            throw HMXError(code: .unavailable, message: "socket path too long: \(path)")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: pathBytes)
        }
        let bindResult = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard bindResult == 0 else {
            let error = errno
            close(fd)
            throw HMXError(
                code: .unavailable,
                message: "cannot bind \(path) for domain \(domain.name): \(String(cString: strerror(error)))"
            )
        }
        // Only the configured user (or, without one, our own user) may connect.
        if let uid = domain.uid, geteuid() == 0 {
            _ = chown(path, uid, gid_t.max)
        }
        _ = chmod(path, 0o600)
        guard listen(fd, 64) == 0 else {
            close(fd)
            throw HMXError(code: .unavailable, message: "listen failed on \(path): errno \(errno)")
        }
        return fd
    }

    private static func closeListener(_ listener: Listener) {
        close(listener.fd)
        unlink(listener.domain.socketPath)
    }
}
