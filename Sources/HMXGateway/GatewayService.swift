// SPDX-License-Identifier: Apache-2.0
import HMXConfig
import HMXControl
import HMXCore
import HMXEmulator
import HMXXen
import Logging
import NIOCore
import NIOPosix
import Prometheus
import ServiceLifecycle
import UnixSignals

/// hmx-gateway as a service: attach to the hypervisor, run the data plane on one
/// event loop, reload on SIGHUP, drain on graceful shutdown (SIGTERM).
public struct GatewayService: Service {
    public let configPath: String
    public let logger: Logger
    private let initialConfig: GatewayConfig
    private let registry: PrometheusCollectorRegistry?
    private let onReady: (@Sendable (GatewayConfig) -> Void)?
    private let tls: (any GatewayTLS)?

    /// - Parameters:
    ///   - registry: where metrics live, for the optional /metrics endpoint.
    ///   - onReady: called once the rings and listeners are up.
    ///   - tls: TLS for tls:// mappings (the HMXTLS module's); without it, a
    ///     configuration with tls:// mappings does not start.
    public init(
        configPath: String,
        config: GatewayConfig,
        logger: Logger,
        registry: PrometheusCollectorRegistry? = nil,
        tls: (any GatewayTLS)? = nil,
        onReady: (@Sendable (GatewayConfig) -> Void)? = nil
    ) {
        self.tls = tls
        self.configPath = configPath
        self.initialConfig = config
        self.logger = logger
        self.registry = registry
        self.onReady = onReady
    }

    public func run() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.next()
        do {
            try await self.run(group: group, loop: loop)
        } catch {
            try? await group.shutdownGracefully()
            throw error
        }
        try? await group.shutdownGracefully()
    }

    private func run(group: MultiThreadedEventLoopGroup, loop: any EventLoop) async throws {
        // Checked before anything is opened: certificates and keys (read now, while
        // the gateway may still have the privileges to), a user that does not exist.
        try self.loadTLS(self.initialConfig)
        let identity = try PrivilegeDrop.resolve(
            user: self.initialConfig.user,
            group: self.initialConfig.group,
            file: self.initialConfig.file
        )
        let link: any HMXLink
        do {
            switch self.initialConfig.link.backend {
            case .emulator(let socket):
                link = try await EmulatorLink.attach(
                    socketPath: socket,
                    configuration: Self.emulatorLinkConfiguration(for: self.initialConfig),
                    group: loop
                )
            case .xen: link = try await XenLink.open(group: loop)
            }
        } catch {
            self.logger.critical("cannot attach to the hypervisor", metadata: ["error": "\(error)"])
            throw error
        }
        var attached: Logger.Metadata = [
            "domain": "\(link.localDomain)", "backend": "\(self.initialConfig.link.backend)",
        ]
        if let xen = link as? XenLink {
            // Which way ring memory is given to Xen depends on the guest type.
            attached["guest_type"] = "\(xen.guestType)"
            attached["ring_frames"] = "\(xen.frameMethod)"
        }
        self.logger.info("attached to the hypervisor", metadata: attached)
        let config = self.initialConfig
        let logger = self.logger
        let tls = self.tls
        let inherited = InheritedListeners.fromEnvironment()
        let core = try await loop.submit {
            let audit = try config.audit.map { try AuditLog($0) }
            let gateway = Gateway(config: config, link: link, logger: logger, audit: audit, tls: tls)
            gateway.inheritedListeners = inherited
            return NIOLoopBound(gateway, eventLoop: loop)
        }.get()
        // Health first: /readyz says what the start still waits for.
        var metricsChannel: (any Channel)?
        if let endpoint = config.metricsListen, let registry = self.registry {
            let health: MetricsEndpoint.HealthSource = { loop.submit { core.value.health() } }
            do {
                metricsChannel = try await MetricsEndpoint.bind(
                    endpoint,
                    registry: registry,
                    health: health,
                    group: group
                ).get()
            } catch {
                self.logger.critical(
                    "cannot listen for metrics",
                    metadata: ["listen": "\(endpoint)", "error": "\(error)"]
                )
                _ = try? await link.close().get()
                throw error
            }
            self.logger.info(
                "metrics at /metrics, health at /healthz, /readyz, /status",
                metadata: ["listen": "\(endpoint)"]
            )
        }
        // The control socket (`hmx-gateway status`), owned by the user the gateway
        // will run as.
        var controlChannel: (any Channel)?
        if let path = config.controlSocket {
            do {
                controlChannel = try await ControlSocket.bind(
                    path: path,
                    owner: (identity.uid, identity.gid),
                    group: loop
                ) { request in
                    loop.submit {
                        switch request {
                        case .status(let json): json ? core.value.status().json : core.value.status().text
                        }
                    }
                }.get()
            } catch {
                self.logger.critical(
                    "cannot listen on the control socket",
                    metadata: ["path": "\(path)", "error": "\(error)"]
                )
                metricsChannel?.close(promise: nil)
                _ = try? await link.close().get()
                throw error
            }
        }
        // Closes the metrics and control listeners (and removes the control socket).
        let closeEndpoints = {
            metricsChannel?.close(promise: nil)
            if let controlChannel, let path = config.controlSocket {
                controlChannel.close(promise: nil)
                unlink(path)
            }
        }
        do {
            try await loop.flatSubmit { core.value.start() }.get()
        } catch {
            self.logger.critical("cannot start the listeners", metadata: ["error": "\(error)"])
            closeEndpoints()
            _ = try? await loop.flatSubmit { core.value.shutdown() }.get()
            _ = try? await link.close().get()
            throw error
        }
        if identity.uid != nil || identity.gid != nil {
            do {
                try PrivilegeDrop.drop(uid: identity.uid, gid: identity.gid)
            } catch {
                self.logger.critical("cannot drop privileges; stopping", metadata: ["error": "\(error)"])
                _ = try? await loop.flatSubmit { core.value.shutdown() }.get()
                closeEndpoints()
                _ = try? await link.close().get()
                throw error
            }
            self.logger.info(
                "privileges dropped",
                metadata: ["uid": "\(getuid())", "gid": "\(getgid())", "user": "\(config.user ?? "-")"]
            )
        }
        self.onReady?(config)
        self.logger.info(
            "gateway ready",
            metadata: ["exports": "\(config.exports.count)", "imports": "\(config.imports.count)"]
        )
        // The service manager (systemd Type=notify): ready now; from the event loop, the
        // watchdog at half its period and the status line when it changes.
        let notifier = ServiceManagerNotifier()
        let status = try await loop.submit { core.value.health().summary }.get()
        notifier.ready(status: status)
        let heartbeat = try await Self.startHeartbeat(notifier, status: status, core: core, loop: loop)
        defer { heartbeat?.cancel() }

        let hangups = await UnixSignalsSequence(trapping: .sighup)
        // The link's close as a cancellable wait (a future's get() is not cancellable).
        let (linkClosed, linkClosedContinuation) = AsyncStream.makeStream(of: Void.self)
        link.closeFuture.whenComplete { _ in linkClosedContinuation.finish() }
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask {
                for await _ in linkClosed {}
                if Task.isCancelled { return }
                throw HMXError(code: .linkClosed, message: "the hypervisor link closed")
            }
            tasks.addTask {
                await withGracefulShutdownHandler {
                    for await _ in hangups.cancelOnGracefulShutdown() {
                        notifier.reloading()
                        await self.reload(core: core, loop: loop)
                        notifier.ready(status: (try? await loop.submit { core.value.health().summary }.get()) ?? "")
                    }
                } onGracefulShutdown: {
                    logger.info("graceful shutdown: draining connections")
                    notifier.stopping(status: "draining connections")
                }
            }
            do {
                try await tasks.next()
            } catch {
                self.logger.critical("lost the hypervisor link; stopping", metadata: ["error": "\(error)"])
                tasks.cancelAll()
                closeEndpoints()
                throw error
            }
            tasks.cancelAll()
        }
        try await loop.flatSubmit { core.value.shutdown() }.get()
        closeEndpoints()
        _ = try? await link.close().get()
        self.logger.info("gateway stopped")
    }

    /// Watchdog pings (at half of `WATCHDOG_USEC`) and status updates (every 5 s at
    /// most, when the status changed), both from the gateway's event loop.
    private static func startHeartbeat(
        _ notifier: ServiceManagerNotifier,
        status: String,
        core: NIOLoopBound<Gateway>,
        loop: any EventLoop
    ) async throws -> RepeatedTask? {
        guard notifier.isActive else { return nil }
        let interval = min(notifier.watchdogInterval ?? 5_000_000, 5_000_000)
        let lastStatus = try await loop.submit { NIOLoopBoundBox(status, eventLoop: loop) }.get()
        return loop.scheduleRepeatedTask(initialDelay: .microseconds(interval), delay: .microseconds(interval)) { _ in
            if notifier.watchdogInterval != nil { notifier.watchdog() }
            let status = core.value.health().summary
            if status != lastStatus.value {
                lastStatus.value = status
                notifier.status(status)
            }
        }
    }

    /// Reads the certificates and keys of tls:// mappings, or says why it cannot.
    private func loadTLS(_ config: GatewayConfig) throws {
        let usesTLS = config.imports.contains { $0.tls != nil } || config.exports.contains { $0.tls != nil }
        guard usesTLS else { return }
        guard let tls = self.tls else { throw TLSFilesError("\(config.file): tls:// mappings need TLS support") }
        do {
            try tls.load(config)
        } catch {
            self.logger.critical("cannot load TLS certificates", metadata: ["error": "\(error)"])
            throw error
        }
    }

    private func reload(core: NIOLoopBound<Gateway>, loop: any EventLoop) async {
        do {
            let config = try GatewayConfig.load(path: self.configPath)
            // New certificates and keys serve new connections; open ones keep theirs.
            // A file that cannot be used keeps the running ones, all of them.
            if let tls = self.tls { try tls.load(config) }
            try await loop.flatSubmit { core.value.reload(config) }.get()
            if config.imports.contains(where: { $0.tls != nil }) || config.exports.contains(where: { $0.tls != nil }) {
                self.logger.info("TLS certificates and keys reloaded")
            }
        } catch let error as ConfigError {
            self.logger.error("reload rejected; keeping the running configuration", metadata: ["error": "\(error)"])
        } catch let error as TLSFilesError {
            self.logger.error(
                "reload rejected; keeping the running configuration and certificates",
                metadata: ["error": "\(error)"]
            )
        } catch let error as IOError where error.errnoCode == EACCES && getuid() != 0 {
            self.logger.error(
                "reload: a new listener needs privileges this gateway gave up (user:); restart it to bind; the rest of the reload is applied",
                metadata: ["error": "\(error)"]
            )
        } catch {
            self.logger.error("reload failed", metadata: ["error": "\(error)"])
        }
    }

    /// Guest memory for an emulated domain: room for twice the rings the configuration
    /// asks for (peers added by a reload, a ring registered again), at least the
    /// emulator link's default.
    static func emulatorLinkConfiguration(for config: GatewayConfig) -> EmulatorLink.Configuration {
        var configuration = EmulatorLink.Configuration()
        let ringBytes = Int(ArgoABI.pagesForRing(length: config.link.ringSize)) * ArgoABI.pageSize
        let rings = config.partnerDomains.count + 1
        configuration.ringMemoryBytes = max(configuration.ringMemoryBytes, 2 * rings * ringBytes)
        return configuration
    }

    /// The guest memory a gateway with `config` brings to the emulator (what the
    /// emulator checks against the domain's `max_memory_mib`).
    static func emulatorMemoryBytes(for config: GatewayConfig) -> Int {
        let configuration = Self.emulatorLinkConfiguration(for: config)
        let pages = { (bytes: Int) in (bytes + ArgoABI.pageSize - 1) / ArgoABI.pageSize * ArgoABI.pageSize }
        return ArgoABI.pageSize + pages(configuration.stagingBytes) + pages(configuration.ringMemoryBytes)
    }
}
