// SPDX-License-Identifier: Apache-2.0
import ArgumentParser
import HMXCommandLine
import HMXConfig
import HMXControl
import HMXCore
import HMXEmulator
import HMXGateway
import HMXTLS
import Logging
import Metrics
import Prometheus
import ServiceLifecycle
import UnixSignals

#if canImport(Glibc)
import Glibc
#endif

/// A synchronous entry point: `run` keeps the process's first thread as an ordinary
/// thread that waits for the service (Swift's asynchronous `main` would park it with
/// every signal blocked, out of reach of the privilege drop that has to change every
/// thread's ids).
@main
struct HMXGatewayCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hmx-gateway",
        abstract: "Bridge TCP, Unix and vsock sockets onto HMX (Argo) streams between domains.",
        version: hmxVersion,
        subcommands: [Run.self, CheckConfig.self, Explain.self, Status.self],
        defaultSubcommand: Run.self
    )
}

func loadConfigOrExit(_ path: String) -> GatewayConfig {
    do {
        return try GatewayConfig.load(path: path)
    } catch {
        printError("hmx-gateway: \(error)")
        exit(2)
    }
}

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the gateway (SIGHUP reloads the mappings; SIGTERM drains and stops)."
    )

    @Option(name: .shortAndLong, help: "The gateway's YAML configuration file.")
    var config: String

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .info

    func run() throws {
        let loaded = loadConfigOrExit(self.config)
        tuneAllocatorForDataPath()
        bootstrapLogging(level: self.logLevel)
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        var logger = Logger(label: "hmx-gateway")
        logger[metadataKey: "config"] = "\(self.config)"
        let service = GatewayService(
            configPath: self.config,
            config: loaded,
            logger: logger,
            registry: registry,
            tls: NIOSSLGatewayTLS()
        )
        let serviceLogger = logger
        try blockUntilDone { try await runUntilSignalled(service, tool: "hmx-gateway", logger: serviceLogger) }
    }
}

struct CheckConfig: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Validate a configuration file and print the effective mappings."
    )

    @Argument(help: "The gateway's YAML configuration file.")
    var file: String

    func run() throws {
        let config = loadConfigOrExit(self.file)
        // The certificates and keys of tls:// mappings, as the gateway would load them.
        do {
            try NIOSSLGatewayTLS().load(config)
        } catch {
            printError("hmx-gateway: \(error)")
            throw ExitCode(2)
        }
        print("configuration \(self.file) is valid")
        for line in config.summary { print(line) }
        // What this file shows on its own; `explain` checks it against the rest.
        for finding in DeploymentExplainer.singleGatewayFindings(config, wildcardAllowed: nil) {
            print("\(finding.severity.rawValue): \(finding.message)")
        }
        if DeploymentExplainer.singleGatewayFindings(config, wildcardAllowed: nil).contains(where: {
            $0.severity == .error
        }) {
            throw ExitCode(1)
        }
    }
}
