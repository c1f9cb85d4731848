// SPDX-License-Identifier: Apache-2.0
import HMXConfig
import HMXControl
import HMXCore
import Logging
import NIOCore
import ServiceLifecycle
import UnixSignals

#if canImport(Glibc)
import Glibc
#endif

/// Runs an ``EmulatorServer`` as a service: until graceful shutdown (SIGTERM/SIGINT
/// via the service group), reloading the configuration file on SIGHUP.
public struct EmulatorService: Service {
    public let configPath: String
    public let logger: Logger
    private let initialConfig: EmulatorConfig

    public init(configPath: String, config: EmulatorConfig, logger: Logger) {
        self.configPath = configPath
        self.initialConfig = config
        self.logger = logger
    }

    public func run() async throws {
        // Checked before anything is opened: a user that does not exist stops the start.
        let identity = try PrivilegeDrop.resolve(
            user: self.initialConfig.user,
            group: self.initialConfig.group,
            file: self.initialConfig.file
        )
        let server = try EmulatorServer(config: self.initialConfig, logger: self.logger)
        do {
            try server.start()
        } catch {
            await server.shutdown()
            throw error
        }
        // The control socket (`hmx-emulator status`).
        var control: (any Channel)?
        if let path = self.initialConfig.controlSocket {
            do {
                control = try await ControlSocket.bind(
                    path: path,
                    owner: (identity.uid, identity.gid),
                    group: server.eventLoop
                ) { request in
                    server.status().map { status in
                        switch request {
                        case .status(let json): json ? status.json : status.text
                        }
                    }
                }.get()
            } catch {
                self.logger.critical(
                    "cannot listen on the control socket",
                    metadata: ["path": "\(path)", "error": "\(error)"]
                )
                await server.shutdown()
                throw error
            }
        }
        if identity.uid != nil || identity.gid != nil {
            do {
                try PrivilegeDrop.drop(uid: identity.uid, gid: identity.gid)
            } catch {
                self.logger.critical("cannot drop privileges; stopping", metadata: ["error": "\(error)"])
                control?.close(promise: nil)
                await server.shutdown()
                throw error
            }
            self.logger.info(
                "privileges dropped",
                metadata: ["uid": "\(getuid())", "gid": "\(getgid())", "user": "\(self.initialConfig.user ?? "-")"]
            )
        }
        // The service manager (systemd Type=notify): ready once every domain's socket
        // listens; the watchdog from the event loop that runs the hypercalls.
        let notifier = ServiceManagerNotifier()
        notifier.ready(status: "\(self.initialConfig.domains.count) domains")
        let watchdog = notifier.watchdogInterval.map { interval in
            server.eventLoop.scheduleRepeatedTask(
                initialDelay: .microseconds(interval),
                delay: .microseconds(interval)
            ) { _ in notifier.watchdog() }
        }
        let hangups = await UnixSignalsSequence(trapping: .sighup)
        await withGracefulShutdownHandler {
            for await _ in hangups.cancelOnGracefulShutdown() {
                notifier.reloading()
                self.reload(server)
                notifier.ready(status: "\(server.domainCount) domains")
            }
        } onGracefulShutdown: {
            self.logger.info("shutting down: detaching every domain")
            notifier.stopping(status: "detaching every domain")
        }
        watchdog?.cancel()
        if let control, let path = self.initialConfig.controlSocket {
            try? await control.close()
            unlink(path)
        }
        await server.shutdown()
    }

    private func reload(_ server: EmulatorServer) {
        do {
            let config = try EmulatorConfig.load(path: self.configPath)
            try server.reload(config)
        } catch let error as ConfigError {
            self.logger.error("reload rejected; keeping the running configuration", metadata: ["error": "\(error)"])
        } catch {
            self.logger.error("reload failed", metadata: ["error": "\(error)"])
        }
    }
}
