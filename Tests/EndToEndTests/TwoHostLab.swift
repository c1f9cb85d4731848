// SPDX-License-Identifier: Apache-2.0
import Foundation
import HMXProcessTestSupport
import Testing

/// Two simulated hosts, A and B, each a network namespace with its own loopback, its
/// own hmx-emulator (the host's hypervisor) and a hmx-gateway per domain, all started
/// inside that namespace. A veth pair joins them: A is 192.0.2.10/24, B is
/// 198.51.100.10/24 (documentation ranges), each routed on-link to the other. Host A
/// runs domains netvm (1), web (2) and other (3); host B netvm (1) and db (2).
///
/// Between the hosts there is only the veth (what crosses it is the netvm gateways'
/// TCP, or TLS); within a host, HMX. Needs root: tests that use the lab are enabled
/// with ``isSupported``. Names are unique per lab (pid and a random tag), and both
/// namespaces (with the veth pair, which lives in them) go away with the lab.
final class TwoHostLab: @unchecked Sendable {
    // @unchecked: used from one test task at a time.

    enum Host: String, CaseIterable, Sendable {
        case a
        case b

        /// The host's address on the veth.
        var address: String { self == .a ? "192.0.2.10" : "198.51.100.10" }
        var peer: Host { self == .a ? .b : .a }
        /// Its domains' ids by name.
        var domains: [String: Int] { self == .a ? ["netvm": 1, "web": 2, "other": 3] : ["netvm": 1, "db": 2] }
    }

    struct Export {
        var name: String
        var port: Int
        var target: String
        /// Written quoted (`*@NAME` would be a YAML alias otherwise).
        var allow: [String]
        var extra: [String] = []
    }

    struct Import {
        var name: String
        var listen: String
        var peer: String
        var port: Int
        var extra: [String] = []
    }

    /// Root (network namespaces, a veth pair) and `ip`.
    static var isSupported: Bool { getuid() == 0 && executablePath("ip") != nil }

    /// The veth's name in both namespaces (made there directly: never in the host's).
    static let link = "hmx0"

    let directory: TemporaryDirectory
    /// Each host's network namespace.
    let namespaces: [Host: String]
    private(set) var emulators: [Host: ChildProcess] = [:]
    /// By `HOST/DOMAIN`, like `a/web`.
    private(set) var gateways: [String: ChildProcess] = [:]
    /// Each started gateway's peers, by `HOST/DOMAIN`.
    private var gatewayPeers: [String: [String]] = [:]
    private var children: [ChildProcess] = []

    init() async throws {
        try #require(executablePath("hmx-gateway") != nil, "hmx-gateway is not built in \(binDirectory)")
        self.directory = try TemporaryDirectory()
        let tag = "\(getpid())-\(UUID().uuidString.prefix(6))"
        self.namespaces = Dictionary(uniqueKeysWithValues: Host.allCases.map { ($0, "hmx-host-\($0.rawValue)-\(tag)") })
        // Every stored property is set: from here on a failure still runs deinit,
        // which removes whatever was made.
        let (a, b) = (self.namespaces[.a]!, self.namespaces[.b]!)
        var script = """
            set -ex
            ip netns add \(a)
            ip netns add \(b)
            ip link add \(Self.link) netns \(a) type veth peer name \(Self.link) netns \(b)

            """
        for host in Host.allCases {
            let namespace = self.namespaces[host]!
            script += """
                ip -n \(namespace) link set lo up
                ip -n \(namespace) address add \(host.address)/24 dev \(Self.link)
                ip -n \(namespace) link set \(Self.link) up
                ip -n \(namespace) route add \(host.peer.address)/32 dev \(Self.link)

                """
        }
        let setUp = try ChildProcess.shell(script)
        let status = await setUp.wait(seconds: 30)
        try #require(status == 0, "two hosts joined by a veth pair: \(setUp.log)")
        for host in Host.allCases { try await self.startEmulator(host) }
    }

    deinit {
        for child in self.children { child.killGroup() }
        for name in self.namespaces.values {
            let remove = Process()
            remove.executableURL = URL(fileURLWithPath: executablePath("ip") ?? "/usr/sbin/ip")
            remove.arguments = ["netns", "del", name]
            remove.standardError = FileHandle.nullDevice
            try? remove.run()
            remove.waitUntilExit()
        }
    }

    /// The host's folder in the lab's directory (its emulator's configuration and
    /// sockets, its gateways' configurations).
    func folder(_ host: Host) -> String { "\(self.directory.path)/\(host.rawValue)" }

    /// The emulator socket `domain` of `host` attaches to.
    func socket(_ host: Host, _ domain: String) -> String { "\(self.folder(host))/\(domain).sock" }

    /// Where `domain`'s gateway serves its metrics, on its host's loopback.
    func metricsPort(_ host: Host, _ domain: String) -> Int { 9100 + (host.domains[domain] ?? 99) }

    private func startEmulator(_ host: Host) async throws {
        try FileManager.default.createDirectory(atPath: self.folder(host), withIntermediateDirectories: true)
        let domains = host.domains.sorted { $0.value < $1.value }.map {
            "  - {id: \($0.value), name: \($0.key), socket: \(self.socket(host, $0.key))}"
        }
        let config = try self.directory.write(
            "\(host.rawValue)/emulator.yaml",
            """
            mac_permissive: false
            domains:
            \(domains.joined(separator: "\n"))
            policy:
              - {action: allow}
            control_socket: \(self.folder(host))/emulator.control

            """
        )
        let emulator = try self.spawn(host, "hmx-emulator", ["run", "--config", config])
        self.emulators[host] = emulator
        let ready = await eventually(within: 10) {
            host.domains.keys.allSatisfy { FileManager.default.fileExists(atPath: self.socket(host, $0)) }
        }
        try #require(ready, "the emulator of host \(host.rawValue) did not start: \(emulator.log)")
    }

    /// Starts `program` inside `host`'s namespace; it is killed when the lab goes away.
    func spawn(
        _ host: Host,
        _ program: String,
        _ arguments: [String],
        standardInput: String? = nil
    ) throws -> ChildProcess {
        let child = try ChildProcess(
            executablePath("ip") ?? "/usr/sbin/ip",
            ["netns", "exec", self.namespaces[host]!, executablePath(program) ?? program] + arguments,
            environment: ["PATH": "\(binDirectory):/usr/bin:/bin:/usr/sbin:/sbin"],
            standardInput: standardInput
        )
        self.children.append(child)
        return child
    }

    /// Writes the configuration of `domain`'s gateway in `host`: its `peers` (domains
    /// of the same host, by name), mappings, metrics on ``metricsPort(_:_:)``, and
    /// `extra` (top-level YAML).
    func gatewayConfig(
        _ host: Host,
        _ domain: String,
        peers: [String],
        exports: [Export] = [],
        imports: [Import] = [],
        extra: String = ""
    ) throws -> String {
        var text = """
            link:
              emulator: \(self.socket(host, domain))
            metrics:
              listen: tcp://127.0.0.1:\(self.metricsPort(host, domain))
            peers:

            """
        for peer in peers.sorted() {
            let id = try #require(host.domains[peer], "\(peer) is not a domain of host \(host.rawValue)")
            text += "  \(peer): \(id)\n"
        }
        if !exports.isEmpty {
            text += "exports:\n"
            for export in exports {
                text += "  - name: \(export.name)\n    port: \(export.port)\n    target: \(export.target)\n"
                text += "    allow: [\(export.allow.map { "\"\($0)\"" }.joined(separator: ", "))]\n"
                text += export.extra.map { "    \($0)\n" }.joined()
            }
        }
        if !imports.isEmpty {
            text += "imports:\n"
            for mapping in imports {
                text += "  - name: \(mapping.name)\n    listen: \(mapping.listen)\n"
                text += "    peer: \(mapping.peer)\n    port: \(mapping.port)\n"
                text += mapping.extra.map { "    \($0)\n" }.joined()
            }
        }
        return try self.directory.write("\(host.rawValue)/gateway-\(domain).yaml", text + extra)
    }

    /// Writes the configuration of `domain`'s gateway in `host` and starts it there;
    /// waits until it is ready (its listeners bound).
    @discardableResult
    func startGateway(
        _ host: Host,
        _ domain: String,
        peers: [String],
        exports: [Export] = [],
        imports: [Import] = [],
        extra: String = ""
    ) async throws -> ChildProcess {
        let config = try self.gatewayConfig(
            host,
            domain,
            peers: peers,
            exports: exports,
            imports: imports,
            extra: extra
        )
        let gateway = try self.spawn(host, "hmx-gateway", ["run", "--config", config])
        self.gateways["\(host.rawValue)/\(domain)"] = gateway
        self.gatewayPeers["\(host.rawValue)/\(domain)"] = peers
        let ready = await eventually(within: 20) { gateway.log.contains("gateway ready") || !gateway.isRunning }
        try #require(
            ready && gateway.isRunning,
            "gateway \(domain) in host \(host.rawValue) did not start: \(gateway.log)"
        )
        return gateway
    }

    /// `domain`'s gateway in `host`.
    func gateway(_ host: Host, _ domain: String) throws -> ChildProcess {
        try #require(self.gateways["\(host.rawValue)/\(domain)"], "no gateway \(host.rawValue)/\(domain)")
    }

    /// Waits until every started gateway has registered its ring for each of its peers
    /// (a gateway that started before its peer's retries): until then connections
    /// between them cannot be answered.
    func waitForRings(seconds: Double = 30) async throws {
        for (key, peers) in self.gatewayPeers {
            let host = Host(rawValue: String(key.prefix(1)))!
            let gateway = try #require(self.gateways[key])
            for peer in peers {
                let line = "peer=\(peer)(\(host.domains[peer] ?? 0)) [HMXGateway] ring registered for peer"
                let registered = await eventually(within: seconds) { gateway.log.contains(line) }
                try #require(registered, "\(key) has no ring for \(peer): \(gateway.log)")
            }
        }
    }

    /// SIGHUP to `domain`'s gateway in `host`: it re-reads its configuration,
    /// certificates and keys.
    func reload(_ host: Host, _ domain: String) throws {
        try self.gateway(host, domain).signal(SIGHUP)
    }

    /// SIGTERM to every gateway: each must drain and exit with status 0 within `seconds`.
    /// - Returns: what went wrong, empty if nothing did.
    func stopGateways(seconds: Double = 15) async -> [String] {
        for gateway in self.gateways.values { gateway.signal(SIGTERM) }
        var problems: [String] = []
        for (key, gateway) in self.gateways.sorted(by: { $0.key < $1.key }) {
            let status = await gateway.wait(seconds: seconds)
            if status != 0 {
                problems.append(
                    "gateway \(key) "
                        + (status.map { "exited with status \($0)" } ?? "did not stop within \(seconds) s")
                )
            }
        }
        return problems
    }

    /// The Prometheus counters and gauges of `domain`'s gateway in `host`, by their full
    /// name with labels.
    func metrics(_ host: Host, _ domain: String) async throws -> [String: Double] {
        let url = "http://127.0.0.1:\(self.metricsPort(host, domain))/metrics"
        let script = "import urllib.request; print(urllib.request.urlopen('\(url)', timeout=10).read().decode())"
        let scrape = try await self.run(host, "python3", ["-c", script])
        try #require(scrape.status == 0, "metrics of \(host.rawValue)/\(domain): \(scrape.output)")
        var values: [String: Double] = [:]
        for line in scrape.output.split(separator: "\n") where !line.hasPrefix("#") {
            guard let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else {
                continue
            }
            values[String(line[..<space])] = value
        }
        return values
    }

    /// The connection outcomes `domain`'s gateway in `host` counted on `side` ("import":
    /// connections to its listeners, "export": connections it dials), by outcome.
    func outcomes(_ host: Host, _ domain: String, side: String) async throws -> [String: Int] {
        outcomeCounts(try await self.metrics(host, domain), side: side)
    }

    /// Every gateway's output, for failure messages.
    var gatewayLogs: String {
        self.gateways.sorted { $0.key < $1.key }.map { "--- gateway \($0.key):\n\($0.value.log)" }
            .joined(separator: "\n")
    }
}

extension TwoHostLab: ProgramLab {
    func spawnProgram(_ place: Host, _ program: String, _ arguments: [String]) throws -> ChildProcess {
        try self.spawn(place, program, arguments)
    }
}
