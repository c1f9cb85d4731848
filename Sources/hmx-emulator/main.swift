// SPDX-License-Identifier: Apache-2.0
import ArgumentParser
import HMXCommandLine
import HMXConfig
import HMXCore
import HMXEmulator
import Logging
import ServiceLifecycle
import UnixSignals

#if canImport(Glibc)
import Glibc
#endif

/// A synchronous entry point: `run` keeps the process's first thread an ordinary
/// waiting thread, which the privilege drop (`user:`) reaches like every other.
@main
struct HMXEmulatorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hmx-emulator",
        abstract:
            "A user-space stand-in for Xen's Argo hypervisor: each domain is a process attached over its own Unix socket.",
        version: hmxVersion,
        subcommands: [Run.self, CheckConfig.self, Status.self],
        defaultSubcommand: Run.self
    )
}

/// Exit status for a configuration that cannot be used.
let configErrorExitCode: Int32 = 2

func loadConfigOrExit(_ path: String) -> EmulatorConfig {
    do {
        return try EmulatorConfig.load(path: path)
    } catch {
        printError("hmx-emulator: \(error)")
        exit(configErrorExitCode)
    }
}

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the emulator (SIGHUP reloads the configuration; SIGTERM stops)."
    )

    @Option(name: .shortAndLong, help: "The emulator's YAML configuration file.")
    var config: String

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .info

    func run() throws {
        let loaded = loadConfigOrExit(self.config)
        bootstrapLogging(level: self.logLevel)
        let logger = Logger(label: "hmx-emulator")
        let service = EmulatorService(configPath: self.config, config: loaded, logger: logger)
        try blockUntilDone { try await runUntilSignalled(service, tool: "hmx-emulator", logger: logger) }
    }
}

struct CheckConfig: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Validate a configuration file and print what it means.")

    @Argument(help: "The emulator's YAML configuration file.")
    var file: String

    func run() throws {
        let config = loadConfigOrExit(self.file)
        print("configuration \(self.file) is valid")
        print(
            "argo: \(config.argoEnabled ? "on" : "off"), wildcard rings (mac_permissive): \(config.wildcardRingsAllowed ? "allowed" : "refused")"
        )
        for domain in config.domains {
            let uid = domain.uid.map { "uid \($0)" } ?? "any uid with access to the socket"
            print(
                "domain \(domain.id) \(domain.name): socket \(domain.socketPath), \(uid), memory up to \(domain.maximumMemory >> 20) MiB\(domain.argo ? "" : ", argo disabled")"
            )
        }
        if config.policy.rules.isEmpty {
            print("policy: no rules: every send is denied")
        }
        for (index, rule) in config.policy.rules.enumerated() {
            func name(_ id: DomainID?) -> String {
                guard let id else { return "any" }
                return config.domains.first { $0.id == id }.map { "\($0.name)(\($0.id))" } ?? "\(id)"
            }
            print(
                "policy \(index + 1): \(rule.action.rawValue) \(name(rule.from)) -> \(name(rule.to)) port \(rule.port)"
            )
        }
        print("policy default: deny")
        if config.user != nil || config.group != nil {
            print(
                "runs as user \(config.user ?? "(unchanged)"), group \(config.group ?? "(the user's)") once its sockets are bound"
            )
        }
        if let control = config.controlSocket { print("control socket: \(control) (hmx-emulator status)") }
    }
}

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Ask a running emulator about its domains: attached or not, their rings and what waits in them.",
        discussion: """
            The emulator answers on its control socket (control_socket: in its configuration, \
            mode 0600). Exit status: 0 answered, 2 no answer.
            """
    )

    @OptionGroup var options: StatusOptions

    func run() throws {
        let path = try self.options.socketPath(tool: "hmx-emulator") { loadConfigOrExit($0).controlSocket }
        try printStatus(tool: "hmx-emulator", socket: path, json: self.options.json) { _ in true }
    }
}
