// SPDX-License-Identifier: Apache-2.0
import Foundation
import HMXProcessTestSupport
import Testing

extension GatewayEndToEndTests {
    /// Datagram mappings (`udp://`, `unixgram:`) with real programs: a DNS server and
    /// its client, numbered datagrams of every size, socat over Unix datagram sockets.
    @Suite("datagram mappings")
    struct Datagrams {
        static let toolPath = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent(
            "Tools/datagram_tool.py"
        ).path

        /// The lab with beta exporting `export` (HMX port 53) and alpha importing it on
        /// `udp://127.0.0.1:listen` (or `listen` as given).
        static func start(
            _ lab: GatewayLab,
            target: String,
            listen: String,
            exportExtra: [String] = [],
            importExtra: [String] = []
        ) async throws {
            let betaConfig = try lab.gatewayConfig(
                .beta,
                exports: [.init(name: "dgram", port: 53, target: target, extra: exportExtra)],
                imports: [],
                extra: "control_socket: \(lab.directory.path)/beta.control\n"
            )
            try lab.startGateway(.beta, config: betaConfig)
            let alphaConfig = try lab.gatewayConfig(
                .alpha,
                exports: [],
                imports: [.init(name: "dgram", listen: listen, port: 53, extra: importExtra)],
                extra: "control_socket: \(lab.directory.path)/alpha.control\n"
            )
            try lab.startGateway(.alpha, config: alphaConfig)
            try await Self.waitUntilReady(lab, alphaConfig: alphaConfig, betaConfig: betaConfig)
        }

        /// Both gateways ready: each one's ring for the other registered (a datagram sent
        /// before the peer's ring for us exists is lost, and counted as such).
        static func waitUntilReady(_ lab: GatewayLab, alphaConfig: String, betaConfig: String) async throws {
            let ready = await eventually(within: 30) {
                let alpha = try? await lab.run(.alpha, "hmx-gateway", ["status", "--config", alphaConfig])
                let beta = try? await lab.run(.beta, "hmx-gateway", ["status", "--config", betaConfig])
                return alpha?.status == 0 && beta?.status == 0
            }
            try #require(ready, "\(lab.gatewayLogs)")
        }

        /// The datagram mapping's row of a gateway's `status --json`.
        static func mapping(
            _ lab: GatewayLab,
            _ domain: GatewayLab.Domain,
            name: String = "dgram"
        ) async throws -> [String: Any] {
            let answer = try await lab.run(
                domain,
                "hmx-gateway",
                ["status", "--socket", "\(lab.directory.path)/\(domain.rawValue).control", "--json"]
            )
            let status = try #require(
                try JSONSerialization.jsonObject(with: Data(answer.output.utf8)) as? [String: Any],
                "\(answer.output)"
            )
            let mappings = try #require(status["mappings"] as? [[String: Any]])
            return try #require(mappings.first { $0["name"] as? String == name }, "\(mappings)")
        }

        static func dropped(_ mapping: [String: Any]) -> Int {
            (mapping["datagrams_dropped"] as? [String: Int] ?? [:]).values.reduce(0, +)
        }

        /// Datagrams a gateway lost with a peer it gave up (`messages.datagrams_lost`).
        static func lostWithPeer(_ lab: GatewayLab, _ domain: GatewayLab.Domain) async throws -> Int {
            let answer = try await lab.run(
                domain,
                "hmx-gateway",
                ["status", "--socket", "\(lab.directory.path)/\(domain.rawValue).control", "--json"]
            )
            let status = try #require(
                try JSONSerialization.jsonObject(with: Data(answer.output.utf8)) as? [String: Any],
                "\(answer.output)"
            )
            return (status["messages"] as? [String: Any])?["datagrams_lost"] as? Int ?? -1
        }

        static func json(_ line: String) throws -> [String: Any] {
            let last = line.split(separator: "\n").last(where: { $0.hasPrefix("{") }).map(String.init) ?? ""
            return try #require(try JSONSerialization.jsonObject(with: Data(last.utf8)) as? [String: Any], "\(line)")
        }

        @Test(
            "dig gets dnsmasq's answer through an import and export; dnsmasq sees the domain's address",
            .enabled(
                if: executablePath("dnsmasq") != nil && executablePath("dig") != nil,
                "needs dnsmasq and dig (Debian: dnsmasq-base, bind9-dnsutils)"
            ),
            .timeLimit(.minutes(2))
        )
        func dns() async throws {
            let lab = try await GatewayLab()
            let server = lab.port(30)
            // Under a shell that waits for it: dnsmasq closes the descriptors it inherits,
            // which Foundation's Process takes for its exit (docs/TESTING.md).
            let dnsmasq = try lab.shell(
                .beta,
                "dnsmasq --keep-in-foreground --conf-file=/dev/null --no-resolv --no-hosts --pid-file "
                    + "--port=\(server) --listen-address=127.0.0.1 --bind-interfaces "
                    + "--address=/db.example.test/10.1.2.3 --log-queries --log-facility=- "
                    + "--user=\(getuid() == 0 ? "root" : NSUserName())\nexit $?"
            )
            let up = await eventually(within: 10) { dnsmasq.log.contains("started") }
            try #require(up, "\(dnsmasq.log)")
            try await Self.start(
                lab,
                target: "udp://127.0.0.1:\(server)",
                listen: "udp://127.0.0.1:\(lab.port(31))",
                exportExtra: ["source_address: per_domain"]
            )
            let answer = try await lab.run(
                .alpha,
                "dig",
                ["@127.0.0.1", "-p", "\(lab.port(31))", "db.example.test", "A", "+short", "+time=3", "+tries=3"]
            )
            #expect(answer.output == "10.1.2.3\n", "\(answer.output)\n\(lab.gatewayLogs)")
            // TCP fallback is not in play: the answer came over the datagram mapping.
            let seen = await eventually(within: 5) {
                dnsmasq.log.contains("query[A] db.example.test from 127.77.0.1")
            }
            #expect(seen, "\(dnsmasq.log)")
            let alpha = try await Self.mapping(lab, .alpha)
            #expect(alpha["datagrams_to_peer"] as? Int ?? 0 >= 1 && alpha["datagrams_from_peer"] as? Int ?? 0 >= 1)
        }

        @Test(
            "100,000 datagrams of every size from 1 to 65,507 bytes, a receiver that keeps up: all arrive, in order, whole",
            .timeLimit(.minutes(4))
        )
        func numbered() async throws {
            let lab = try await GatewayLab()
            let server = lab.port(32)
            let receiver = try lab.spawn(
                .beta,
                "python3",
                ["-u", Self.toolPath, "receive", "--port", "\(server)", "--ack-every", "1"]
            )
            let up = await eventually(within: 10) { receiver.output.contains("listening") }
            try #require(up, "\(receiver.log)")
            try await Self.start(lab, target: "udp://127.0.0.1:\(server)", listen: "udp://127.0.0.1:\(lab.port(33))")
            // Acknowledged as they arrive; at most 768 KiB unacknowledged, which the
            // gateways' queues and socket buffers hold.
            let sender = try await lab.run(
                .alpha,
                "python3",
                [
                    Self.toolPath, "send", "--port", "\(lab.port(33))", "--count", "100000", "--seed", "7", "--window",
                    "256", "--window-bytes", "786432", "--smallest", "1",
                ],
                seconds: 200
            )
            #expect(sender.status == 0, "\(sender.output)\n\(lab.gatewayLogs)")
            let sent = try Self.json(sender.output)
            let done = await eventually(within: 20) { receiver.output.contains("\"received\"") }
            try #require(done, "\(receiver.log)")
            let received = try Self.json(receiver.output)
            #expect(sent["sent"] as? Int == 100_000)
            #expect(received["received"] as? Int == 100_000, "\(received)")
            #expect(received["bytes"] as? Int == sent["bytes"] as? Int, "\(received) \(sent)")
            #expect(received["errors"] as? [String] == [], "\(received)")
            let alpha = try await Self.mapping(lab, .alpha)
            let beta = try await Self.mapping(lab, .beta)
            #expect(alpha["datagrams_to_peer"] as? Int == 100_000, "\(alpha)")
            #expect(beta["datagrams_from_peer"] as? Int == 100_000, "\(beta)")
            #expect(Self.dropped(alpha) == 0 && Self.dropped(beta) == 0, "\(alpha)\n\(beta)")
        }

        /// UDP receive-buffer drops of `domain`'s network namespace.
        static func kernelDrops(_ lab: GatewayLab, _ domain: GatewayLab.Domain) async throws -> Int {
            let result = try await lab.run(domain, "python3", [Self.toolPath, "dropstat"])
            return try #require(Int(result.output.trimmingCharacters(in: .whitespacesAndNewlines)), "\(result.output)")
        }

        @Test(
            "a receiver that does not keep up: every datagram is received or counted as dropped, in order",
            .enabled(if: getuid() == 0, "counts the kernel's drops per network namespace (root)"),
            .timeLimit(.minutes(3))
        )
        func lossCounted() async throws {
            let lab = try await GatewayLab()
            try #require(!lab.namespaces.isEmpty, "needs the lab's network namespaces")
            let server = lab.port(34)
            // 200 µs per datagram: slower than the sender.
            let receiver = try lab.spawn(
                .beta,
                "python3",
                ["-u", Self.toolPath, "receive", "--port", "\(server)", "--slow", "0.0002"]
            )
            let up = await eventually(within: 10) { receiver.output.contains("listening") }
            try #require(up, "\(receiver.log)")
            try await Self.start(lab, target: "udp://127.0.0.1:\(server)", listen: "udp://127.0.0.1:\(lab.port(35))")
            let before = (try await Self.kernelDrops(lab, .alpha), try await Self.kernelDrops(lab, .beta))
            let sender = try await lab.run(
                .alpha,
                "python3",
                [Self.toolPath, "send", "--port", "\(lab.port(35))", "--count", "20000", "--seed", "11"],
                seconds: 120
            )
            #expect(sender.status == 0, "\(sender.output)")
            let done = await eventually(within: 60) { receiver.output.contains("\"received\"") }
            try #require(done, "\(receiver.log)")
            let received = try Self.json(receiver.output)
            let alpha = try await Self.mapping(lab, .alpha)
            let beta = try await Self.mapping(lab, .beta)
            let kernel = (
                try await Self.kernelDrops(lab, .alpha) - before.0, try await Self.kernelDrops(lab, .beta) - before.1
            )
            let count = received["received"] as? Int ?? -1
            // Dropped where: by alpha's gateway (its queue for beta), by beta's (its
            // socket to the receiver), by the kernel at alpha's import socket or at the
            // receiver's socket.
            let lost = (try await Self.lostWithPeer(lab, .alpha), try await Self.lostWithPeer(lab, .beta))
            #expect(lost == (0, 0), "no peer was given up")
            let accounted = count + Self.dropped(alpha) + Self.dropped(beta) + kernel.0 + kernel.1 + lost.0 + lost.1
            #expect(
                accounted == 20000,
                "received \(count), alpha dropped \(alpha["datagrams_dropped"] ?? ""), beta dropped \(beta["datagrams_dropped"] ?? ""), kernel \(kernel)"
            )
            #expect(count < 20000, "the receiver kept up after all: \(received)")
            #expect(received["errors"] as? [String] == [], "\(received)")
        }

        @Test(
            "socat over unixgram: a client's datagram reaches the target, and its answer comes back",
            .timeLimit(.minutes(2))
        )
        func unixDatagrams() async throws {
            let lab = try await GatewayLab()
            let target = "\(lab.directory.path)/target.sock"
            let listen = "\(lab.directory.path)/listen.sock"
            let server = try lab.spawn(.beta, "python3", ["-u", Self.toolPath, "echo", "--unix", target])
            let up = await eventually(within: 10) { server.output.contains("listening") }
            try #require(up, "\(server.log)")
            try await Self.start(lab, target: "unixgram:\(target)", listen: "unixgram:\(listen)")
            for (index, line) in ["hello over unixgram", "a second datagram"].enumerated() {
                let client = try await lab.run(
                    .alpha,
                    "/bin/sh",
                    [
                        "-c",
                        "echo '\(line)' | socat -t 3 - UNIX-SENDTO:\(listen),bind=\(lab.directory.path)/client\(index).sock",
                    ]
                )
                #expect(client.output == line.uppercased() + "\n", "\(client.output)\n\(lab.gatewayLogs)")
            }
            let alpha = try await Self.mapping(lab, .alpha)
            #expect(alpha["opened"] as? Int == 2, "one flow per client address: \(alpha)")
            #expect(alpha["datagrams_to_peer"] as? Int == 2 && alpha["datagrams_from_peer"] as? Int == 2, "\(alpha)")
        }

        @Test("a flow per client up to the limit (then dropped and counted); idle flows end on both sides")
        func flowLimitAndIdle() async throws {
            let lab = try await GatewayLab()
            let server = lab.port(36)
            let echo = try lab.spawn(.beta, "python3", ["-u", Self.toolPath, "echo", "--port", "\(server)"])
            let up = await eventually(within: 10) { echo.output.contains("listening") }
            try #require(up, "\(echo.log)")
            try await Self.start(
                lab,
                target: "udp://127.0.0.1:\(server)",
                listen: "udp://127.0.0.1:\(lab.port(37))",
                importExtra: ["max_connections: 2", "idle_timeout: 3s"]
            )
            // Three clients (three source ports), each sending one datagram and waiting
            // for its answer: two get it, the third's datagram is dropped (flow limit).
            let script = """
                import socket, sys
                answers = []
                clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
                for index, client in enumerate(clients):
                    client.settimeout(1 if index == 2 else 5)
                    client.sendto(b'client %d' % index, ('127.0.0.1', int(sys.argv[1])))
                    try: answers.append(client.recv(100).decode())
                    except socket.timeout: answers.append('-')
                print(','.join(answers))
                """
            let result = try await lab.run(.alpha, "python3", ["-c", script, "\(lab.port(37))"], seconds: 30)
            #expect(result.output == "CLIENT 0,CLIENT 1,-\n", "\(result.output)\n\(lab.gatewayLogs)")
            let full = try await Self.mapping(lab, .alpha)
            #expect(full["active_connections"] as? Int == 2, "\(full)")
            #expect((full["datagrams_dropped"] as? [String: Int])?["flow_limit"] == 1, "\(full)")
            #expect((full["outcomes"] as? [String: Int])?["limit_reached"] == 1, "\(full)")
            // Idle for more than 3 seconds: gone here, and beta's side with them.
            let idle = await eventually(within: 10) {
                let alpha = try? await Self.mapping(lab, .alpha)
                let beta = try? await Self.mapping(lab, .beta)
                return alpha?["active_connections"] as? Int == 0 && beta?["active_connections"] as? Int == 0
            }
            #expect(idle, "\(lab.gatewayLogs)")
        }
    }

    /// SEQPACKET mappings: connections whose records keep their boundaries.
    @Suite("seqpacket mappings")
    struct Seqpacket {
        static let toolPath = Datagrams.toolPath

        static func start(_ lab: GatewayLab, target: String, listen: String) async throws {
            let betaConfig = try lab.gatewayConfig(
                .beta,
                exports: [.init(name: "ipc", port: 60, target: target)],
                imports: [],
                extra: "control_socket: \(lab.directory.path)/beta.control\n"
            )
            try lab.startGateway(.beta, config: betaConfig)
            let alphaConfig = try lab.gatewayConfig(
                .alpha,
                exports: [],
                imports: [.init(name: "ipc", listen: listen, port: 60)],
                extra: "control_socket: \(lab.directory.path)/alpha.control\n"
            )
            try lab.startGateway(.alpha, config: alphaConfig)
            try await Datagrams.waitUntilReady(lab, alphaConfig: alphaConfig, betaConfig: betaConfig)
        }

        @Test(
            "records of 1 to 200,000 bytes cross whole and in order both ways, one at a time and pipelined; half-close crosses",
            .timeLimit(.minutes(2))
        )
        func records() async throws {
            let lab = try await GatewayLab()
            let target = "\(lab.directory.path)/target.sock"
            let listen = "\(lab.directory.path)/listen.sock"
            let server = try lab.spawn(.beta, "python3", ["-u", Self.toolPath, "seqpacket-echo", "--unix", target])
            let up = await eventually(within: 10) { server.output.contains("listening") }
            try #require(up, "\(server.log)")
            try await Self.start(lab, target: "seqpacket:\(target)", listen: "seqpacket:\(listen)")
            let check = try await lab.run(.alpha, "python3", [Self.toolPath, "seqpacket-check", "--unix", listen])
            let result = try Datagrams.json(check.output)
            #expect(result["records"] as? Int == 228, "\(check.output)\n\(lab.gatewayLogs)")
            #expect(result["errors"] as? [String] == [], "\(check.output)")
            #expect(result["eof"] as? Bool == true, "\(check.output)")

            // socat speaks SEQPACKET too (socktype=5).
            let socat = try await lab.run(
                .alpha,
                "/bin/sh",
                ["-c", "printf 'one record\\n' | socat -t 3 - UNIX-CONNECT:\(listen),socktype=5"]
            )
            #expect(socat.output == "one record\n", "\(socat.output)")
        }

        @Test("a seqpacket import of a byte-stream export is refused: no such service", .timeLimit(.minutes(2)))
        func kindsMustMatch() async throws {
            let lab = try await GatewayLab()
            try await lab.startToolServer(.beta, ["echo-server", "--port", "\(lab.echoTarget)"])
            let listen = "\(lab.directory.path)/listen.sock"
            try await Self.start(lab, target: "tcp://127.0.0.1:\(lab.echoTarget)", listen: "seqpacket:\(listen)")
            let attempt = try await lab.run(
                .alpha,
                "python3",
                [
                    "-c",
                    """
                    import socket, sys
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET); s.settimeout(10); s.connect(sys.argv[1])
                    try:
                        s.send(b'x'); print('got', s.recv(100))
                    except OSError as error:
                        print('ended', type(error).__name__)
                    """,
                    listen,
                ]
            )
            #expect(attempt.output.hasPrefix("ended") || attempt.output == "got b''\n", "\(attempt.output)")
            let mapping = try await Datagrams.mapping(lab, .alpha, name: "ipc")
            #expect((mapping["outcomes"] as? [String: Int])?["no_such_service"] == 1, "\(mapping)")
        }
    }
}
