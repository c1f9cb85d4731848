// SPDX-License-Identifier: Apache-2.0
import HMXConfig
import Logging
import ServiceLifecycle
import UnixSignals

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
        let server = try EmulatorServer(config: self.initialConfig, logger: self.logger)
        do {
            try server.start()
        } catch {
            await server.shutdown()
            throw error
        }
        let hangups = await UnixSignalsSequence(trapping: .sighup)
        await withGracefulShutdownHandler {
            for await _ in hangups.cancelOnGracefulShutdown() {
                self.reload(server)
            }
        } onGracefulShutdown: {
            self.logger.info("shutting down: detaching every domain")
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
