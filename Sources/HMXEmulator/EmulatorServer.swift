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
///
/// What a domain process can make the emulator hold is bounded per domain
/// (``EmulatorLimits``): handshakes under way and their time, and output queued for a
/// process that does not read.
public final class EmulatorServer: Sendable {
    struct Listener {
        var domain: EmulatorConfig.DomainEntry
        var fd: Int32
    }

    struct State {
        var config: EmulatorConfig
        var listeners: [UInt16: Listener] = [:]
        var isRunning = false
        var isStopped = false
    }

    private let group: MultiThreadedEventLoopGroup
    /// Runs the accept loop (its one thread).
    private let threadPool: NIOThreadPool
    let core: NIOLoopBound<EmulatorCore>
    let state: Mutex<State>
    let wakePipe: (read: Int32, write: Int32)
    let logger: Logger
    let limits: EmulatorLimits

    /// The event loop that runs the hypervisor.
    public var eventLoop: any EventLoop { self.core.eventLoop }

    /// Domains of the configuration in force.
    public var domainCount: Int { self.state.withLock { $0.config.domains.count } }
    let startedAt = NIODeadline.now()

    public init(config: EmulatorConfig, logger: Logger, limits: EmulatorLimits = EmulatorLimits()) throws {
        self.logger = logger
        self.limits = limits
        self.group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        self.threadPool = NIOThreadPool(numberOfThreads: 1)
        self.threadPool.start()
        let loop = self.group.next()
        self.core = try loop.submit {
            let core = EmulatorCore(settings: config.settings, eventLoop: loop, logger: logger)
            core.hypervisor.domainNames = Dictionary(
                uniqueKeysWithValues: config.domains.map { ($0.id.rawValue, $0.name) }
            )
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

    // MARK: - Accepting (EmulatorServer+Attach.swift)

    func wake() {
        var byte: UInt8 = 1
        _ = write(self.wakePipe.write, &byte, 1)
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
        if let uid = domain.uid, uid != geteuid() {
            guard geteuid() == 0, chown(path, uid, gid_t.max) == 0 else {
                let reason = geteuid() == 0 ? String(cString: strerror(errno)) : "that needs root"
                close(fd)
                unlink(path)
                throw HMXError(
                    code: .unavailable,
                    message:
                        "cannot give \(path) to uid \(uid) for domain \(domain.name): \(reason) (an emulator that gave root up with user: must be restarted to add such a domain)"
                )
            }
        }
        _ = chmod(path, 0o600)
        guard listen(fd, 64) == 0, chmx_set_nonblocking(fd) == 0 else {
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
