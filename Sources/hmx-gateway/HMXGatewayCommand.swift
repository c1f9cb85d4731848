// SPDX-License-Identifier: Apache-2.0
import ArgumentParser
import HMXCommandLine
import HMXConfig
import HMXCore
import HMXGateway
import Logging
import Metrics
import Prometheus
import ServiceLifecycle
import UnixSignals

#if canImport(Glibc)
import Glibc
#endif

@main
struct HMXGatewayCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hmx-gateway",
        abstract: "Bridge TCP, Unix and vsock sockets onto HMX (Argo) streams between domains.",
        subcommands: [Run.self, CheckConfig.self],
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

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the gateway (SIGHUP reloads the mappings; SIGTERM drains and stops)."
    )

    @Option(name: .shortAndLong, help: "The gateway's YAML configuration file.")
    var config: String

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .info

    func run() async throws {
        let loaded = loadConfigOrExit(self.config)
        tuneAllocatorForDataPath()
        bootstrapLogging(level: self.logLevel)
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        var logger = Logger(label: "hmx-gateway")
        logger[metadataKey: "config"] = "\(self.config)"
        let service = GatewayService(configPath: self.config, config: loaded, logger: logger, registry: registry)
        try await runUntilSignalled(service, tool: "hmx-gateway", logger: logger)
    }
}

struct CheckConfig: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Validate a configuration file and print the effective mappings.")

    @Argument(help: "The gateway's YAML configuration file.")
    var file: String

    func run() throws {
        let config = loadConfigOrExit(self.file)
        print("configuration \(self.file) is valid")
        print("link: \(config.link.backend), gateway port \(config.link.port), ring \(config.link.ringSize) bytes per peer")
        for export in config.exports {
            let allow: String
            switch export.allow {
            case .any: allow = "any domain"
            case .domains(let set): allow = set.sorted().map { config.name(of: $0) }.joined(separator: ", ")
            }
            print(
                "export \(export.name): HMX port \(export.port) -> \(export.target); allow \(allow); max \(export.maxConnections) connections; connect timeout \(export.connectTimeoutMilliseconds) ms\(export.proxyProtocol == .v2 ? "; PROXY v2" : "")"
            )
        }
        for importConfig in config.imports {
            print(
                "import \(importConfig.name): \(importConfig.listen) -> \(config.name(of: importConfig.peer)):\(importConfig.port); max \(importConfig.maxConnections) connections\(importConfig.idleTimeoutMilliseconds > 0 ? "; idle timeout \(importConfig.idleTimeoutMilliseconds) ms" : "")"
            )
        }
        let peers = config.partnerDomains.count + (config.wantsWildcardRing ? 1 : 0)
        let ringPages = Int(ArgoABI.pagesForRing(length: config.link.ringSize))
        print(
            "rings: \(config.partnerDomains.count) partner ring(s)\(config.wantsWildcardRing ? " + 1 wildcard ring (needs mac-permissive)" : ""); memory for rings: \(peers * ringPages * 4) KiB"
        )
        print(
            "flow control: \(config.window) bytes window per connection and direction\(config.effectiveWindowMax > config.window && config.windowPool > 0 ? ", growing to \(config.effectiveWindowMax) for fast streams (\(config.windowPool) bytes of growth in all)" : ""); \(config.peerInFlight.map { "\($0) bytes" } ?? "a ring's worth") on the way to each peer at once"
        )
        if let metrics = config.metricsListen { print("metrics: \(metrics)/metrics") }
    }
}
