// SPDX-License-Identifier: Apache-2.0
import HMXConfig
import HMXCore
import HMXEmulator
import HMXGateway
import HMXStream
import Testing

@Suite("Gateway configuration")
struct GatewayConfigTests {
    static let valid = """
        link: {emulator: /run/hmx/a.sock, port: 5000, ring_size: 131008}
        peers: {beta: 2, gamma: 3}
        exports:
          - {name: db, port: 5432, target: "unix:/run/postgresql/.s.PGSQL.5432", allow: [beta, 7], max_connections: 10, connect_timeout: 250ms, proxy_protocol: v2}
          - {name: web, port: 80, target: "tcp://[::1]:8080", allow: [any]}
        imports:
          - {name: redis, listen: "tcp://127.0.0.1:16379", peer: gamma, port: 6379, idle_timeout: 2m, open_timeout: 90s}
          - {name: vs, listen: "vsock://1:5000", peer: 2, port: 1}
        limits: {window: 65536, window_max: 131072, window_pool: 0, drain_timeout: 3s, peer_in_flight: 524288}
        metrics: {listen: "tcp://127.0.0.1:9464"}
        """

    @Test func xenBackend() throws {
        let config = try GatewayConfig.parse("link: {xen: true}\n", file: "gw.yaml")
        #expect(config.link.backend == .xen)
        #expect(config.peerInFlight == nil)
        // Ring frames come from a Xen domain's small balloon slack: 64 pages.
        #expect(config.link.ringSize == 262_080)
    }

    @Test("defaults: 1 MiB rings on the emulator, a 256 KiB window growing to 4 MiB from a 64 MiB pool")
    func defaults() throws {
        let config = try GatewayConfig.parse("link: {emulator: /a}\n", file: "gw.yaml")
        #expect(config.link.ringSize == 1_048_512)
        #expect(config.window == 262_144)
        #expect(config.windowMax == 4 << 20)
        #expect(config.windowPool == 64 << 20)
        // Windows grow to twice the ring at most (a sender keeps a ring's worth on the way).
        #expect(config.effectiveWindowMax == 2 * 1_048_512)
        let xen = try GatewayConfig.parse("link: {xen: true}\n", file: "gw.yaml")
        #expect(xen.effectiveWindowMax == 2 * 262_080)
        // A window above the default maximum is its own maximum (no growth).
        let large = try GatewayConfig.parse("link: {emulator: /a}\nlimits: {window: 8388608}\n", file: "gw.yaml")
        #expect(large.windowMax == 8 << 20)
        #expect(large.effectiveWindowMax == 8 << 20)
    }

    @Test func validConfig() throws {
        let config = try GatewayConfig.parse(Self.valid, file: "gw.yaml")
        #expect(config.link.backend == .emulator(socket: "/run/hmx/a.sock"))
        #expect(config.link.port == 5000)
        #expect(config.link.ringSize == 131_008)
        #expect(config.exports[0].target == .unix(path: "/run/postgresql/.s.PGSQL.5432"))
        #expect(config.exports[0].allow == .domains([DomainID(2), DomainID(7)]))
        #expect(config.exports[0].connectTimeoutMilliseconds == 250)
        #expect(config.exports[0].proxyProtocol == .v2)
        #expect(config.exports[1].target == .tcp(host: "::1", port: 8080))
        #expect(config.exports[1].allow == .any)
        #expect(config.imports[0].peer == DomainID(3))
        #expect(config.imports[0].idleTimeoutMilliseconds == 120_000)
        #expect(config.imports[0].openTimeoutMilliseconds == 90_000)
        #expect(config.imports[1].openTimeoutMilliseconds == 30_000)
        #expect(config.imports[1].listen == .vsock(cid: 1, port: 5000))
        #expect(config.window == 65536)
        #expect(config.windowMax == 131_072)
        #expect(config.windowPool == 0)
        #expect(config.peerInFlight == 524_288)
        #expect(config.drainTimeoutMilliseconds == 3000)
        #expect(config.partnerDomains == [DomainID(2), DomainID(3), DomainID(7)])
        #expect(config.wantsWildcardRing)
    }

    @Test("audit: stderr or an absolute path; anything else names its line")
    func audit() throws {
        let base = "link: {emulator: /a}\n"
        #expect(try GatewayConfig.parse(base, file: "g.yaml").audit == nil)
        #expect(try GatewayConfig.parse(base + "audit: stderr\n", file: "g.yaml").audit == .standardError)
        let file = try GatewayConfig.parse(base + "audit: /var/log/hmx/audit.jsonl\n", file: "g.yaml")
        #expect(file.audit == .file("/var/log/hmx/audit.jsonl"))
        #expect(file.summary.contains("audit records: /var/log/hmx/audit.jsonl"))
        #expect(throws: ConfigError.self) { try GatewayConfig.parse(base + "audit: logs/audit\n", file: "g.yaml") }
        do {
            _ = try GatewayConfig.parse(base + "audit: logs/audit\n", file: "g.yaml")
        } catch {
            #expect("\(error)" == "g.yaml:2: audit: give stderr or an absolute file path")
        }
    }

    @Test("control_socket: an absolute path a Unix socket can have, for both daemons")
    func controlSocket() throws {
        let base = "link: {emulator: /a}\n"
        #expect(try GatewayConfig.parse(base, file: "g.yaml").controlSocket == nil)
        let config = try GatewayConfig.parse(base + "control_socket: /run/hmx/web.control\n", file: "g.yaml")
        #expect(config.controlSocket == "/run/hmx/web.control")
        #expect(config.summary.contains("control socket: /run/hmx/web.control (hmx-gateway status)"))
        let long = "/" + String(repeating: "x", count: 107)
        for bad in ["run/web.control", long] {
            #expect(throws: ConfigError.self) {
                try GatewayConfig.parse(base + "control_socket: \(bad)\n", file: "g.yaml")
            }
            do {
                _ = try GatewayConfig.parse(base + "control_socket: \(bad)\n", file: "g.yaml")
            } catch {
                #expect(
                    "\(error)"
                        == "g.yaml:2: control_socket: give an absolute path of at most 107 bytes (a Unix socket's limit)"
                )
            }
        }
        let emulator = "domains:\n  - {id: 1, name: a, socket: /a}\n"
        #expect(try EmulatorConfig.parse(emulator, file: "e.yaml").controlSocket == nil)
        #expect(
            try EmulatorConfig.parse(emulator + "control_socket: /run/hmx/emulator.control\n", file: "e.yaml")
                .controlSocket == "/run/hmx/emulator.control"
        )
        let dropping = try EmulatorConfig.parse(emulator + "user: hmx\ngroup: hmx\n", file: "e.yaml")
        #expect(dropping.user == "hmx" && dropping.group == "hmx")
        do {
            _ = try EmulatorConfig.parse(emulator + "control_socket: emulator.control\n", file: "e.yaml")
            Issue.record("a relative control_socket was accepted")
        } catch {
            #expect(
                "\(error)"
                    == "e.yaml:3: control_socket: give an absolute path of at most 107 bytes (a Unix socket's limit)"
            )
        }
    }

    @Test("source_address: per_domain or a prefix; each domain's address; errors name the key")
    func sourceAddress() throws {
        func export(_ target: String, _ source: String) -> String {
            "link: {emulator: /a}\npeers: {web: 1, db: 300}\nexports:\n"
                + "  - {name: s, port: 1, target: \"\(target)\", allow: [web, db], source_address: \"\(source)\"}\n"
        }
        let loopback = try GatewayConfig.parse(export("tcp://127.0.0.1:5432", "per_domain"), file: "g.yaml")
        let prefix = try #require(loopback.exports.first?.sourceAddress)
        #expect(prefix == .perDomain && "\(prefix)" == "127.77.0.0/16")
        #expect(prefix.text(for: DomainID(0)) == "127.77.0.0")
        #expect(prefix.text(for: DomainID(1)) == "127.77.0.1")
        #expect(prefix.text(for: DomainID(300)) == "127.77.1.44")
        #expect(prefix.text(for: DomainID(0x7FEF)) == "127.77.127.239")
        #expect(
            loopback.summary.contains {
                $0.contains(
                    "connections come from 127.77.0.0/16 + the domain id (web(1) from 127.77.0.1, db(300) from 127.77.1.44)"
                )
            }
        )
        let v6 = try GatewayConfig.parse(export("tcp://[fd00::1]:80", "fd00:77::/64"), file: "g.yaml")
        #expect(v6.exports.first?.sourceAddress?.text(for: DomainID(300)) == "fd00:77::12c")
        #expect(
            try GatewayConfig.parse(export("tcp://10.0.0.1:80", "10.200.0.0/16"), file: "g.yaml").exports.first?
                .sourceAddress?.text(for: DomainID(1)) == "10.200.0.1"
        )
        let errors: [(String, String, String)] = [
            ("tcp://127.0.0.1:1", "nope", "expected per_domain or a prefix ADDRESS/LENGTH; found 'nope'"),
            ("tcp://127.0.0.1:1", "10.1.0.0/24", "the prefix length must be 8 to 17: domain ids need 15 bits"),
            ("tcp://[::1]:1", "fd00::/120", "the prefix length must be 8 to 113: domain ids need 15 bits"),
            ("tcp://127.0.0.1:1", "10.1.0.1/16", "10.1.0.1/16 has bits set after its first 16"),
            ("tcp://127.0.0.1:1", "10.1.0.300/16", "'10.1.0.300' is not an IPv4 address"),
            (
                "unix:/run/x", "per_domain",
                "only for tcp:// and udp:// targets (a Unix or vsock target has no IP source address)"
            ),
            (
                "tcp://127.0.0.1:1", "fd00::/64",
                "fd00::/64 and the target tcp://127.0.0.1:1 are not of the same address family"
            ),
            (
                "tcp://10.0.0.1:1", "per_domain",
                "a loopback source (127.77.0.0/16) reaches only loopback targets; give a prefix of this host's addresses for tcp://10.0.0.1:1"
            ),
        ]
        for (target, source, reason) in errors {
            do {
                _ = try GatewayConfig.parse(export(target, source), file: "g.yaml")
                Issue.record("accepted \(source) for \(target)")
            } catch {
                #expect("\(error)" == "g.yaml:4: exports[0].source_address: \(reason)")
            }
        }
    }

    @Test("datagram mappings: udp:// and unixgram:, flows expire (60 s by default), stream-only keys refused")
    func datagramMappings() throws {
        let config = try GatewayConfig.parse(
            """
            link: {emulator: /a}
            peers: {dns: 2}
            exports:
              - {name: resolver, port: 53, target: "udp://127.0.0.1:53", allow: [dns], source_address: per_domain}
              - {name: log, port: 514, target: "unixgram:/dev/log", allow: [dns], idle_timeout: 5s}
            imports:
              - {name: dns, listen: "udp://127.0.0.1:5353", peer: dns, port: 53, max_connections: 10}
              - {name: syslog, listen: "unixgram:/run/hmx/log", peer: dns, port: 514}

            """,
            file: "g.yaml"
        )
        #expect(config.exports.map(\.target) == [.udp(host: "127.0.0.1", port: 53), .unixDatagram(path: "/dev/log")])
        #expect(config.exports.map(\.idleTimeoutMilliseconds) == [60_000, 5000])
        #expect(
            config.imports.map(\.listen) == [.udp(host: "127.0.0.1", port: 5353), .unixDatagram(path: "/run/hmx/log")]
        )
        #expect(config.imports.map(\.idleTimeoutMilliseconds) == [60_000, 60_000])
        #expect(config.imports.allSatisfy { $0.listen.isDatagram })
        #expect("\(Endpoint.udp(host: "::1", port: 53))" == "udp://[::1]:53")
        let records = try GatewayConfig.parse(
            """
            link: {emulator: /a}
            exports:
              - {name: ipc, port: 60, target: "seqpacket:/run/app.sock", allow: [2]}
            imports:
              - {name: ipc, listen: "seqpacket:/run/hmx/app.sock", peer: 2, port: 61}

            """,
            file: "g.yaml"
        )
        #expect(records.exports[0].target == .seqpacket(path: "/run/app.sock") && records.exports[0].target.isRecords)
        #expect(!records.imports[0].listen.isDatagram && records.imports[0].idleTimeoutMilliseconds == 0)
        let permissions = try GatewayConfig.parse(
            "link: {emulator: /a}\nimports:\n  - {name: i, listen: \"unix:/run/x\", peer: 2, port: 1, mode: \"0660\", group: adm}\n",
            file: "g.yaml"
        )
        #expect(permissions.imports[0].mode == 0o660 && permissions.imports[0].group == "adm")
        // An OPEN finds an export of its own kind only.
        #expect(records.admission(of: DomainID(2), to: 60) { _, _ in (0, 0) } == .refused(.noSuchService))
        #expect(
            records.admission(of: DomainID(2), to: 60, records: true) { _, _ in (0, 0) }
                == .admitted(records.exports[0])
        )
        // A datagram flow never dials, so stream admission never finds a datagram export.
        #expect(config.admission(of: DomainID(2), to: 53) { _, _ in (0, 0) } == .refused(.noSuchService))
        #expect(
            config.admission(of: DomainID(2), to: 53, datagram: true) { _, _ in (0, 0) } == .admitted(config.exports[0])
        )
        let errors: [(String, String)] = [
            (
                "exports:\n  - {name: e, port: 1, target: \"udp://127.0.0.1:1\", allow: [2], proxy_protocol: v2}\n",
                "g.yaml:3: exports[0].proxy_protocol: PROXY v2 is for stream targets; a datagram target gets the datagrams alone"
            ),
            (
                "exports:\n  - {name: e, port: 1, target: \"udp://127.0.0.1:1\", allow: [2], connect_timeout: 1s}\n",
                "g.yaml:3: exports[0].connect_timeout: a datagram target is not connected to; leave connect_timeout out"
            ),
            (
                "imports:\n  - {name: i, listen: \"udp://127.0.0.1:1\", peer: 2, port: 1, idle_timeout: 0}\n",
                "g.yaml:3: imports[0].idle_timeout: a datagram flow needs an idle timeout to end; give one above 0"
            ),
            (
                "imports:\n  - {name: i, listen: \"unixgram:/x\", peer: 2, port: 1, open_timeout: 5s}\n",
                "g.yaml:3: imports[0].open_timeout: a datagram import opens no connection; leave open_timeout out"
            ),
            (
                "exports:\n  - {name: e, port: 1, target: \"unixgram:/x\", allow: [2], source_address: per_domain}\n",
                "g.yaml:3: exports[0].source_address: only for tcp:// and udp:// targets (a Unix or vsock target has no IP source address)"
            ),
            (
                "metrics: {listen: \"udp://127.0.0.1:9\"}\n",
                "g.yaml:2: metrics.listen: metrics are served over HTTP: give tcp://, unix: or vsock://"
            ),
            (
                "imports:\n  - {name: i, listen: \"sctp://x:1\", peer: 2, port: 1}\n",
                "g.yaml:3: imports[0].listen: expected tcp://HOST:PORT, tls://HOST:PORT, unix:/PATH, vsock://CID:PORT, seqpacket:/PATH, udp://HOST:PORT or unixgram:/PATH"
            ),
            (
                "exports:\n  - {name: e, port: 1, target: \"seqpacket:/x\", allow: [2], proxy_protocol: v2}\n",
                "g.yaml:3: exports[0].proxy_protocol: PROXY v2 is for byte streams; a seqpacket target gets its records alone"
            ),
            (
                "imports:\n  - {name: i, listen: \"unix:/x\", peer: 2, port: 1, mode: \"0999\"}\n",
                "g.yaml:3: imports[0].mode: expected permissions in octal, like \"0660\"; found '0999'"
            ),
            (
                "imports:\n  - {name: i, listen: \"tcp://127.0.0.1:1\", peer: 2, port: 1, group: adm}\n",
                "g.yaml:3: imports[0].group: only for a Unix listener (unix:, unixgram:, seqpacket:)"
            ),
            (
                "metrics: {listen: \"seqpacket:/x\"}\n",
                "g.yaml:2: metrics.listen: metrics are served over HTTP: give tcp://, unix: or vsock://"
            ),
        ]
        for (text, message) in errors {
            do {
                _ = try GatewayConfig.parse("link: {emulator: /a}\n" + text, file: "g.yaml")
                Issue.record("accepted: \(text)")
            } catch {
                #expect("\(error)" == message)
            }
        }
    }

    @Test("errors name file, line, key and reason")
    func errors() {
        let cases: [(String, String)] = [
            ("peers: {}\n", "gw.yaml:1: link: required key is missing"),
            ("link: {port: 1}\n", "gw.yaml:1: link: say which hypervisor"),
            (
                "link: {emulator: /a, xen: true}\n",
                "gw.yaml:1: link: give either emulator: SOCKET or xen: true, not both"
            ),
            ("link: {emulator: /a, colour: red}\n", "gw.yaml:1: link.colour: unknown key"),
            ("link: {emulator: /a, ring_size: 4040}\n", "gw.yaml:1: link.ring_size: must be a multiple of 16"),
            (
                "link: {emulator: /a}\nexports:\n  - {name: x, port: 1, target: \"http://x\", allow: [any]}\n",
                "gw.yaml:3: exports[0].target: expected tcp://HOST:PORT, tls://HOST:PORT, unix:/PATH, vsock://CID:PORT, seqpacket:/PATH, udp://HOST:PORT or unixgram:/PATH"
            ),
            (
                "link: {emulator: /a}\nexports:\n  - {name: x, port: 1, target: \"tcp://h:99999\", allow: [any]}\n",
                "gw.yaml:3: exports[0].target: bad port '99999' in tcp://h:99999"
            ),
            (
                "link: {emulator: /a}\nexports:\n  - {name: x, port: 1, target: \"tcp://h:1\", allow: [nobody]}\n",
                "gw.yaml:3: exports[0].allow[0]: unknown peer 'nobody'"
            ),
            (
                "link: {emulator: /a}\nexports:\n  - {name: x, port: 1, target: \"tcp://h:1\", allow: [any]}\n  - {name: y, port: 1, target: \"tcp://h:2\", allow: [any]}\n",
                "gw.yaml:4: exports[1].port: port 1 is exported twice"
            ),
            (
                "link: {emulator: /a}\nimports:\n  - {name: x, listen: \"tcp://h:1\", peer: 2, port: 1, idle_timeout: soon}\n",
                "gw.yaml:3: imports[0].idle_timeout: expected a duration like 500ms, 5s, 2m or 1h; found 'soon'"
            ),
            (
                "link: {emulator: /a}\nimports:\n  - {name: x, listen: \"tcp://h:1\", peer: 2, port: 1}\n  - {name: y, listen: \"tcp://h:1\", peer: 2, port: 2}\n",
                "gw.yaml:4: imports[1].listen: tcp://h:1 is listened on twice"
            ),
            ("link: {emulator: /a}\npeers: {a: 2, b: 2}\n", "gw.yaml:2: peers.b: domain 2 is already named 'a'"),
            ("link: {emulator: /a}\nlimits: {peer_in_flight: 100}\n", "gw.yaml:2: limits.peer_in_flight: "),
            (
                "link: {emulator: /a}\nlimits:\n  window: 65536\n  window_max: 32768\n",
                "gw.yaml:4: limits.window_max: must be at least limits.window (65536)"
            ),
            ("link: {emulator: /a}\nlimits: {window_pool: -1}\n", "gw.yaml:2: limits.window_pool: "),
            (
                "link: {emulator: /a}\nimports:\n  - {name: x, listen: \"tcp://h:1\", peer: 2, port: 1, open_timeout: 0}\n",
                "gw.yaml:3: imports[0].open_timeout: must be longer than 0"
            ),
        ]
        for (text, expected) in cases {
            do {
                _ = try GatewayConfig.parse(text, file: "gw.yaml")
                Issue.record("accepted: \(text)")
            } catch {
                #expect(error.description.hasPrefix(expected), "\(error.description) does not start with \(expected)")
            }
        }
    }
}

@Suite("Shipped configuration files")
struct ShippedConfigTests {
    static let configs = URLPath.repository + "/Configs"

    @Test(arguments: ["gateway.yaml", "demo-gateway-alpha.yaml", "demo-gateway-beta.yaml"])
    func gatewayConfigsValidate(_ name: String) throws {
        let config = try GatewayConfig.load(path: "\(Self.configs)/\(name)")
        #expect(!(config.exports.isEmpty && config.imports.isEmpty))
    }
}

enum URLPath {
    /// The repository root, from this file's path.
    static let repository: String = {
        var parts = "\(#filePath)".split(separator: "/", omittingEmptySubsequences: false)
        parts.removeLast(3)
        return parts.joined(separator: "/")
    }()
}
