// SPDX-License-Identifier: Apache-2.0
import Foundation
import HMXProcessTestSupport
import Testing

/// One end-to-end setup: hmx-emulator with domains alpha (1) and beta (2), one
/// hmx-gateway per domain, and the programs each domain runs.
///
/// As root, each domain gets its own network namespace with only loopback, and its
/// gateway and programs run inside it: HMX (the emulator's Unix sockets, which do not
/// depend on network namespaces) is then the only path between the two domains.
/// Without root everything shares the host's loopback, on ports chosen per lab.
///
/// Every lab also maps an echo service (HMX port 7): alpha's `echoPort` reaches an
/// echo server in beta, which is how ``startGateways(exports:imports:)`` knows that
/// both gateways are ready.
final class GatewayLab: @unchecked Sendable {
    // @unchecked: used from one test task at a time.

    enum Domain: String, CaseIterable {
        case alpha
        case beta

        var id: Int { self == .alpha ? 1 : 2 }
        var peer: Domain { self == .alpha ? .beta : .alpha }
    }

    struct Export {
        var name: String
        var port: Int
        var target: String
        var allow: [String] = ["alpha"]
        var extra: [String] = []
    }

    struct Import {
        var name: String
        var listen: String
        var port: Int
        var peer: String = "beta"
        var extra: [String] = []
    }

    /// Both directions allowed between alpha and beta.
    static let openPolicy = """
          - {action: allow, from: alpha, to: beta}
          - {action: allow, from: beta, to: alpha}
        """

    static let toolPath = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent(
        "Tools/e2e_tool.py"
    ).path

    let directory: TemporaryDirectory
    let emulator: ChildProcess
    /// Network namespace of each domain; empty when not running as root.
    let namespaces: [Domain: String]
    private let basePort: Int
    private(set) var gateways: [Domain: ChildProcess] = [:]
    private var children: [ChildProcess] = []

    /// alpha's listening port of the echo service.
    var echoPort: Int { self.port(0) }
    /// The port of beta's echo server.
    var echoTarget: Int { self.port(1) }
    /// beta's export of the echo service (in every lab).
    var echoExport: Export { Export(name: "echo", port: 7, target: "tcp://127.0.0.1:\(self.echoTarget)") }
    /// alpha's import of the echo service (in every lab).
    var echoImport: Import { Import(name: "echo", listen: "tcp://127.0.0.1:\(self.echoPort)", port: 7) }

    /// - Parameters:
    ///   - extraDomains: more domains the emulator knows (no gateway of the lab runs in
    ///     them: the test attaches to their sockets itself).
    ///   - macPermissive: wildcard rings allowed (exports with `allow: [any]`).
    ///   - emulatorConfig: the emulator's configuration instead of the generated one (its
    ///     text, made for the lab's directory, and the domain sockets it names, which the
    ///     lab waits for); the test decides which of its domains runs in which namespace.
    init(
        policy: String = GatewayLab.openPolicy,
        extraDomains: [(id: UInt16, name: String)] = [],
        macPermissive: Bool = false,
        emulatorConfig: ((_ directory: String) throws -> (text: String, sockets: [String]))? = nil
    ) async throws {
        try #require(executablePath("hmx-gateway") != nil, "hmx-gateway is not built in \(binDirectory)")
        self.directory = try TemporaryDirectory()
        let useNamespaces = getuid() == 0 && ProcessInfo.processInfo.environment["HMX_E2E_NAMESPACES"] != "0"
        var namespaces: [Domain: String] = [:]
        if useNamespaces {
            let tag = "\(getpid())-\(UUID().uuidString.prefix(6))"
            for domain in Domain.allCases {
                let name = "hmx-\(domain.rawValue)-\(tag)"
                let add = try await HMXProcessTestSupport.run("ip", ["netns", "add", name], seconds: 10)
                try #require(add.status == 0, "ip netns add \(name): \(add.output)")
                namespaces[domain] = name
                let up = try await HMXProcessTestSupport.run(
                    "ip",
                    ["netns", "exec", name, "ip", "link", "set", "lo", "up"],
                    seconds: 10
                )
                try #require(up.status == 0, "loopback up in \(name): \(up.output)")
            }
        }
        self.namespaces = namespaces
        self.basePort = useNamespaces ? 20000 : Int.random(in: 200..<600) * 100
        if let emulatorConfig {
            let (text, sockets) = try emulatorConfig(self.directory.path)
            let file = try self.directory.write("emulator.yaml", text)
            self.emulator = try ChildProcess("hmx-emulator", ["run", "--config", file])
            let ready = await eventually(within: 10) {
                sockets.allSatisfy { FileManager.default.fileExists(atPath: $0) }
            }
            try #require(ready, "the emulator did not start: \(self.emulator.log)")
            return
        }
        (self.emulator, _) = try await startEmulator(
            in: self.directory,
            domains: Domain.allCases.map { (UInt16($0.id), $0.rawValue) } + extraDomains,
            policy: policy,
            macPermissive: macPermissive
        )
    }

    deinit {
        for child in self.children { child.killGroup() }
        for name in self.namespaces.values {
            let remove = Process()
            remove.executableURL = URL(fileURLWithPath: executablePath("ip") ?? "/usr/sbin/ip")
            remove.arguments = ["netns", "del", name]
            try? remove.run()
            remove.waitUntilExit()
        }
    }

    /// The emulator's configuration file (the hypervisor's policy and domains).
    var emulatorConfig: String { "\(self.directory.path)/emulator.yaml" }

    /// A distinct port for this lab (`offset` < 100).
    func port(_ offset: Int) -> Int { self.basePort + offset }

    /// The command line that runs `program` inside `domain`.
    private func commandLine(_ domain: Domain, _ program: String, _ arguments: [String]) -> (String, [String]) {
        let path = executablePath(program) ?? program
        guard let namespace = self.namespaces[domain] else { return (path, arguments) }
        return (executablePath("ip") ?? "/usr/sbin/ip", ["netns", "exec", namespace, path] + arguments)
    }

    /// Starts `program` in `domain`; it is killed when the lab goes away.
    func spawn(
        _ domain: Domain,
        _ program: String,
        _ arguments: [String],
        standardInput: String? = nil,
        environment: [String: String] = [:]
    ) throws -> ChildProcess {
        let (executable, fullArguments) = self.commandLine(domain, program, arguments)
        let child = try ChildProcess(
            executable,
            fullArguments,
            environment: environment.merging(["PATH": "\(binDirectory):/usr/bin:/bin:/usr/sbin:/sbin"]) { $1 },
            standardInput: standardInput
        )
        self.children.append(child)
        return child
    }

    /// The gateway configuration file of `domain`.
    func gatewayConfig(
        _ domain: Domain,
        exports: [Export],
        imports: [Import],
        peers: [String: Int]? = nil,
        ringSize: Int? = nil,
        extra: String = ""
    ) throws -> String {
        var text = """
            link:
              emulator: \(self.directory.path)/\(domain.rawValue).sock

            """
        if let ringSize { text += "  ring_size: \(ringSize)\n" }
        text += "peers:\n"
        for (name, id) in (peers ?? [domain.peer.rawValue: domain.peer.id]).sorted(by: { $0.key < $1.key }) {
            text += "  \(name): \(id)\n"
        }
        if !exports.isEmpty {
            text += "exports:\n"
            for export in exports {
                text += "  - name: \(export.name)\n    port: \(export.port)\n    target: \(export.target)\n"
                text += "    allow: [\(export.allow.joined(separator: ", "))]\n"
                text += export.extra.map { "    \($0)\n" }.joined()
            }
        }
        if !imports.isEmpty {
            text += "imports:\n"
            for mapping in imports {
                text +=
                    "  - name: \(mapping.name)\n    listen: \(mapping.listen)\n    peer: \(mapping.peer)\n    port: \(mapping.port)\n"
                text += mapping.extra.map { "    \($0)\n" }.joined()
            }
        }
        return try self.directory.write("gateway-\(domain.rawValue).yaml", text + extra)
    }

    /// Starts hmx-gateway in `domain` with `config`.
    @discardableResult
    /// - Parameter fileLimit: the gateway's limit of open files (`prlimit --nofile`).
    func startGateway(
        _ domain: Domain,
        config: String,
        fileLimit: Int? = nil,
        environment: [String: String] = [:]
    ) throws -> ChildProcess {
        let gateway: ChildProcess
        if let fileLimit {
            let program = executablePath("hmx-gateway") ?? "hmx-gateway"
            gateway = try self.spawn(
                domain,
                "prlimit",
                ["--nofile=\(fileLimit):\(fileLimit)", "--", program, "run", "--config", config]
            )
        } else {
            gateway = try self.spawn(domain, "hmx-gateway", ["run", "--config", config], environment: environment)
        }
        self.gateways[domain] = gateway
        return gateway
    }

    /// Starts the echo server in beta, then beta's gateway (exports) and alpha's gateway
    /// (imports), both with the echo mapping added, and waits until an echo round trip
    /// through HMX succeeds.
    /// `ringSize` and `extra` (per domain) go into both configurations.
    func startGateways(
        exports: [Export] = [],
        imports: [Import] = [],
        betaPeers: [String: Int]? = nil,
        alphaPeers: [String: Int]? = nil,
        ringSize: Int? = nil,
        extra: [Domain: String] = [:],
        waitForEcho: Bool = true
    ) async throws {
        try await self.startToolServer(.beta, ["echo-server", "--port", "\(self.echoTarget)"])
        try self.startGateway(
            .beta,
            config: try self.gatewayConfig(
                .beta,
                exports: [self.echoExport] + exports,
                imports: [],
                peers: betaPeers,
                ringSize: ringSize,
                extra: extra[.beta] ?? ""
            )
        )
        try self.startGateway(
            .alpha,
            config: try self.gatewayConfig(
                .alpha,
                exports: [],
                imports: [self.echoImport] + imports,
                peers: alphaPeers,
                ringSize: ringSize,
                extra: extra[.alpha] ?? ""
            )
        )
        guard waitForEcho else { return }
        let probe = try await self.runTool(
            .alpha,
            ["probe", "--port", "\(self.echoPort)", "--timeout", "30"],
            seconds: 40
        )
        try #require(probe.status == 0, "echo through the gateways: \(probe.output)\n\(self.gatewayLogs)")
    }

    /// A gateway's Prometheus counters and gauges (`metrics.listen` on `port` in its
    /// config), by their full name with labels, e.g. `hmx_ring_full_total`.
    func metrics(_ domain: Domain, port: Int) async throws -> [String: Double] {
        let script =
            "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:\(port)/metrics', timeout=10).read().decode())"
        let scrape = try await self.run(domain, "python3", ["-c", script])
        try #require(scrape.status == 0, "metrics of \(domain): \(scrape.output)")
        var values: [String: Double] = [:]
        for line in scrape.output.split(separator: "\n") where !line.hasPrefix("#") {
            guard let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else {
                continue
            }
            values[String(line[..<space])] = value
        }
        return values
    }

    /// Both gateways' output, for failure messages.
    var gatewayLogs: String {
        Domain.allCases.compactMap { domain in
            self.gateways[domain].map { "--- gateway \(domain.rawValue):\n\($0.log)" }
        }.joined(separator: "\n")
    }

    /// SIGTERM to both gateways: each must drain and exit with status 0 within `seconds`.
    /// - Returns: what went wrong, empty if nothing did.
    func stopGateways(seconds: Double = 15) async -> [String] {
        for gateway in self.gateways.values { gateway.signal(SIGTERM) }
        var problems: [String] = []
        for domain in Domain.allCases {
            guard let gateway = self.gateways[domain] else { continue }
            let status = await gateway.wait(seconds: seconds)
            if status != 0 {
                problems.append(
                    "gateway \(domain.rawValue) "
                        + (status.map { "exited with status \($0)" } ?? "did not stop within \(seconds) s")
                )
            }
        }
        return problems
    }
}

/// A lab whose programs run in one of its places (a domain, a simulated host), and
/// what it offers once it can start one there.
protocol ProgramLab {
    associatedtype Place: RawRepresentable where Place.RawValue == String

    /// Starts `program` in `place`; it is killed when the lab goes away.
    func spawnProgram(_ place: Place, _ program: String, _ arguments: [String]) throws -> ChildProcess
}

extension ProgramLab {
    /// Runs `program` in `place` to completion within `seconds`.
    func run(
        _ place: Place,
        _ program: String,
        _ arguments: [String],
        seconds: Double = 30
    ) async throws -> (status: Int32?, output: String) {
        let child = try self.spawnProgram(place, program, arguments)
        let status = await child.wait(seconds: seconds)
        return (status, child.log)
    }

    /// A bash script in `place`.
    func shell(_ place: Place, _ script: String) throws -> ChildProcess {
        try self.spawnProgram(place, "/bin/bash", ["-c", script])
    }

    /// The test tool (Tools/e2e_tool.py) in `place`.
    func tool(_ place: Place, _ arguments: [String]) throws -> ChildProcess {
        try self.spawnProgram(place, "python3", ["-u", GatewayLab.toolPath] + arguments)
    }

    func runTool(
        _ place: Place,
        _ arguments: [String],
        seconds: Double = 60
    ) async throws -> (status: Int32?, output: String) {
        let child = try self.tool(place, arguments)
        let status = await child.wait(seconds: seconds)
        return (status, child.log)
    }

    /// Starts a server from the test tool in `place` and waits until it listens.
    @discardableResult
    func startToolServer(_ place: Place, _ arguments: [String]) async throws -> ChildProcess {
        let server = try self.tool(place, arguments)
        let listening = await eventually(within: 10) { server.output.contains("listening") }
        try #require(listening, "\(arguments) in \(place.rawValue) did not start: \(server.log)")
        return server
    }
}

extension GatewayLab: ProgramLab {
    func spawnProgram(_ place: Domain, _ program: String, _ arguments: [String]) throws -> ChildProcess {
        try self.spawn(place, program, arguments)
    }
}
