// SPDX-License-Identifier: Apache-2.0
import Foundation
import HMXProcessTestSupport
import Testing

extension GatewayEndToEndTests {
    /// Host A's domain web uses a service of host B's domain db (``TwoHostLab``): web's
    /// gateway → HMX → A's netvm gateway, which dials B's netvm gateway over TLS as
    /// netvm-a.example and says who calls in a PROXY v2 header → B's netvm gateway,
    /// which believes netvm-a.example (`trusted_proxies`) → HMX → db's gateway, which
    /// admits web@netvm-a.example relayed by netvm. Domain other on host A goes the
    /// same way and is refused by db's allow-list.
    @Suite(
        "across two hosts",
        .enabled(if: TwoHostLab.isSupported, "needs root: each host is a network namespace, joined by a veth pair")
    )
    struct CrossHost {
        /// One service through the chain.
        struct Service {
            var name: String
            /// The HMX port of db's export and of A's netvm's export.
            var port: Int
            /// Where B's netvm gateway listens for A's, on 198.51.100.10.
            var linkPort: Int
            /// web's listener on host A's loopback.
            var webPort: Int
            /// other's listener on host A's loopback, if other imports it too.
            var otherPort: Int? = nil
            /// db's export's target, in host B.
            var target: String
            /// db's export's allow-list.
            var allow: [String] = ["web@netvm-a.example"]
            /// More lines of db's export.
            var extra: [String] = []
            /// db's export admits callers relayed by netvm (`relays: [netvm]`); false: it
            /// judges netvm by its stamped id alone (`allow: [netvm]`).
            var relayed = true
        }

        /// How A's netvm gateway reaches B's.
        enum Link {
            /// TLS, verified both ways: B serves host-b.example (checked as `serverName`,
            /// or as 198.51.100.10), A shows netvm-a.example, and B trusts headers from
            /// that name.
            case tls(serverName: String?)
            /// Plain TCP: B trusts headers from 192.0.2.0/24.
            case tcp
        }

        /// Starts the chain for `services`: db, B's netvm, A's netvm, web (and other, if a
        /// service has `otherPort`), then waits until every gateway has its rings.
        static func start(
            _ lab: TwoHostLab,
            _ certificates: TestCertificates,
            services: [Service],
            link: Link = .tls(serverName: nil)
        ) async throws {
            try await lab.startGateway(
                .b,
                "db",
                peers: ["netvm"],
                exports: services.map {
                    .init(
                        name: $0.name,
                        port: $0.port,
                        target: $0.target,
                        allow: $0.allow,
                        extra: ($0.relayed ? ["relays: [netvm]"] : []) + $0.extra
                    )
                }
            )
            let scheme: String
            let listener: [String]
            let dialer: [String]
            switch link {
            case .tls(let serverName):
                scheme = "tls"
                listener = [
                    certificates.listener("host-b", clientCA: "ca"), "proxy_protocol: accept",
                    "trusted_proxies: [netvm-a.example]",
                ]
                dialer = [certificates.target(serverName: serverName, client: "netvm-a"), "proxy_protocol: v2"]
            case .tcp:
                scheme = "tcp"
                listener = ["proxy_protocol: accept", "trusted_proxies: [192.0.2.0/24]"]
                dialer = ["proxy_protocol: v2"]
            }
            try await lab.startGateway(
                .b,
                "netvm",
                peers: ["db"],
                imports: services.map {
                    .init(
                        name: $0.name,
                        listen: "\(scheme)://198.51.100.10:\($0.linkPort)",
                        peer: "db",
                        port: $0.port,
                        extra: listener
                    )
                }
            )
            let forOther = services.compactMap { service in service.otherPort.map { (service, $0) } }
            try await lab.startGateway(
                .a,
                "netvm",
                peers: forOther.isEmpty ? ["web"] : ["web", "other"],
                exports: services.map {
                    .init(
                        name: $0.name,
                        port: $0.port,
                        target: "\(scheme)://198.51.100.10:\($0.linkPort)",
                        allow: $0.otherPort == nil ? ["web"] : ["web", "other"],
                        extra: dialer
                    )
                }
            )
            try await lab.startGateway(
                .a,
                "web",
                peers: ["netvm"],
                imports: services.map {
                    .init(name: $0.name, listen: "tcp://127.0.0.1:\($0.webPort)", peer: "netvm", port: $0.port)
                }
            )
            if !forOther.isEmpty {
                try await lab.startGateway(
                    .a,
                    "other",
                    peers: ["netvm"],
                    imports: forOther.map { service, port in
                        .init(name: service.name, listen: "tcp://127.0.0.1:\(port)", peer: "netvm", port: service.port)
                    }
                )
            }
            try await lab.waitForRings()
        }

        /// db's gateway refused one connection by its allow-list: counted once on its
        /// export side and on B's netvm import side (refused by its peer), and logged.
        static func expectDenied(
            _ lab: TwoHostLab,
            since before: (db: [String: Int], netvm: [String: Int]),
            _ why: String
        ) async throws {
            let db = try await outcomeChanges(since: before.db, until: "denied_by_gateway_policy") {
                try await lab.outcomes(.b, "db", side: "export")
            }
            #expect(db == ["denied_by_gateway_policy": 1], "\(why): db's export side: \(db)\n\(lab.gatewayLogs)")
            let netvm = try await outcomeChanges(since: before.netvm, until: "denied_by_gateway_policy") {
                try await lab.outcomes(.b, "netvm", side: "import")
            }
            #expect(netvm == ["denied_by_gateway_policy": 1], "\(why): B's netvm import side: \(netvm)")
            // The refusal's log line names the outcome (or, as before TLS, its description).
            let log = try lab.gateway(.b, "db").log
            let refusal = log.split(separator: "\n").last { $0.contains("connection refused") }.map(String.init) ?? ""
            #expect(
                refusal.contains("denied_by_gateway_policy") || refusal.contains("allow-list"),
                "\(why): db's log: \(log)"
            )
        }

        /// What the two sides' counters said before a refusal, for ``expectDenied``.
        static func deniedBefore(_ lab: TwoHostLab) async throws -> (db: [String: Int], netvm: [String: Int]) {
            (try await lab.outcomes(.b, "db", side: "export"), try await lab.outcomes(.b, "netvm", side: "import"))
        }

        /// redis-server in host B's db; redis-cli in host A behind web's and other's imports.
        @Test(
            "redis in db serves web via TLS as web@netvm-a.example; other, relayed alike, is denied by db's allow-list",
            .timeLimit(.minutes(3))
        )
        func redis() async throws {
            let lab = try await TwoHostLab()
            let certificates = try await TestCertificates(in: lab.directory.path)
            let redis = try lab.spawn(
                .b,
                "redis-server",
                ["--port", "6379", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", lab.folder(.b)]
            )
            let ready = await eventually(within: 20) { redis.log.contains("Ready to accept connections") }
            try #require(ready, "\(redis.log)")
            try await Self.start(
                lab,
                certificates,
                services: [
                    .init(
                        name: "redis",
                        port: 6379,
                        linkPort: 5433,
                        webPort: 6380,
                        otherPort: 6381,
                        target: "tcp://127.0.0.1:6379"
                    )
                ]
            )
            func cli(_ port: Int, _ arguments: [String]) async throws -> (status: Int32?, output: String) {
                try await lab.run(.a, "redis-cli", ["-h", "127.0.0.1", "-p", "\(port)"] + arguments, seconds: 20)
            }
            let ping = try await cli(6380, ["PING"])
            #expect(ping.status == 0 && ping.output == "PONG\n", "\(ping.output)\n\(lab.gatewayLogs)")
            let value = UUID().uuidString
            let set = try await cli(6380, ["SET", "greeting", value])
            #expect(set.output == "OK\n", "\(set.output)")
            let get = try await cli(6380, ["GET", "greeting"])
            #expect(get.output == "\(value)\n", "\(get.output)")

            let before = try await Self.deniedBefore(lab)
            let refused = try await cli(6381, ["GET", "greeting"])
            #expect(refused.status != 0 && !refused.output.contains(value), "other: \(refused.output)")
            try await Self.expectDenied(lab, since: before, "other@netvm-a.example")

            let again = try await cli(6380, ["GET", "greeting"])
            #expect(again.output == "\(value)\n", "web after other's refusal: \(again.output)")
            #expect(await lab.stopGateways() == [], "\(lab.gatewayLogs)")
        }

        /// db's export sends a PROXY v2 header to e2e_tool.py's proxy-echo-server; A's
        /// netvm checks B's certificate as host-b.example (`server_name`).
        @Test(
            "the target behind db reads the chained identity: netvm stamped, web asserted by netvm-a.example, SSL CN",
            .timeLimit(.minutes(3))
        )
        func identity() async throws {
            let lab = try await TwoHostLab()
            let certificates = try await TestCertificates(in: lab.directory.path)
            let server = try await lab.startToolServer(.b, ["proxy-echo-server", "--port", "7000"])
            try await Self.start(
                lab,
                certificates,
                services: [
                    .init(
                        name: "who",
                        port: 7000,
                        linkPort: 5433,
                        webPort: 7100,
                        otherPort: 7101,
                        target: "tcp://127.0.0.1:7000",
                        extra: ["proxy_protocol: v2"]
                    )
                ],
                link: .tls(serverName: "host-b.example")
            )
            let bytes = 1 << 20
            let result = try await lab.runTool(
                .a,
                ["proxy-check", "--port", "7100", "--bytes", "\(bytes)"],
                seconds: 60
            )
            let header = try #require(jsonObject(result.output), "\(result.output)\n\(lab.gatewayLogs)")
            #expect(header["error"] == nil, "\(header)")
            #expect(header["domain_id"] as? Int == 1, "stamped by B's hypervisor: netvm, \(header)")
            #expect(header["domain_name"] as? String == "netvm", "\(header)")
            #expect(header["asserted_domain"] as? String == "web", "\(header)")
            #expect(header["asserted_by"] as? String == "netvm-a.example", "\(header)")
            let ssl = try #require(header["ssl"] as? [String: Any], "TLV 0x20: \(header)")
            #expect(ssl["client"] as? Int == 0x07 && ssl["verify"] as? Int == 0, "\(ssl)")
            #expect(ssl["cn"] as? String == "netvm-a.example", "\(ssl)")
            #expect((ssl["version"] as? String)?.hasPrefix("TLSv1.") == true, "\(ssl)")
            #expect(ssl["error"] == nil, "\(ssl)")
            let tlvs = Set(header["tlvs"] as? [Int] ?? [])
            #expect(tlvs.isSuperset(of: [0x20, 0xE0, 0xE1, 0xE2, 0xE3]), "\(header)")
            #expect(header["payload_ok"] as? Bool == true && header["echoed"] as? Int == bytes, "\(header)")
            #expect(result.status == 0, "\(result.output)")

            let before = try await Self.deniedBefore(lab)
            let other = try await lab.runTool(.a, ["proxy-check", "--port", "7101", "--bytes", "1000"], seconds: 30)
            #expect(other.status != 0, "other: \(other.output)")
            try await Self.expectDenied(lab, since: before, "other@netvm-a.example")
            #expect(
                server.output.components(separatedBy: "header ").count - 1 == 1,
                "only web's connection reached the target: \(server.output)"
            )
            #expect(await lab.stopGateways() == [], "\(lab.gatewayLogs)")
        }

        /// Without TLS, B's netvm trusts headers by the sender's address: the asserting name
        /// is A's address, and the target gets no TLV 0x20. A second service (an echo
        /// server that db exports to netvm by its stamped id) takes untrusted clients' own
        /// bytes. Straight to B's netvm listeners: host A's connection without a header,
        /// and a header from host B's own address, are proxy_header_refused.
        @Test(
            "a tcp:// link trusting 192.0.2.0/24 admits web@192.0.2.10; untrusted headers, missing headers: refused",
            .timeLimit(.minutes(3))
        )
        func trustedByAddress() async throws {
            let lab = try await TwoHostLab()
            let certificates = try await TestCertificates(in: lab.directory.path)
            let server = try await lab.startToolServer(.b, ["proxy-echo-server", "--port", "7000"])
            try await lab.startToolServer(.b, ["echo-server", "--port", "7007"])
            try await Self.start(
                lab,
                certificates,
                services: [
                    .init(
                        name: "who",
                        port: 7000,
                        linkPort: 5434,
                        webPort: 7100,
                        otherPort: 7101,
                        target: "tcp://127.0.0.1:7000",
                        allow: ["web@192.0.2.10"],
                        extra: ["proxy_protocol: v2"]
                    ),
                    .init(
                        name: "echo",
                        port: 7007,
                        linkPort: 5435,
                        webPort: 7107,
                        target: "tcp://127.0.0.1:7007",
                        allow: ["netvm"],
                        relayed: false
                    ),
                ],
                link: .tcp
            )
            let result = try await lab.runTool(.a, ["proxy-check", "--port", "7100", "--bytes", "65536"], seconds: 60)
            let header = try #require(jsonObject(result.output), "\(result.output)\n\(lab.gatewayLogs)")
            #expect(header["error"] == nil, "\(header)")
            #expect(header["payload_ok"] as? Bool == true && result.status == 0, "the bytes, in order: \(header)")
            #expect(header["domain_id"] as? Int == 1 && header["domain_name"] as? String == "netvm", "\(header)")
            #expect(header["asserted_domain"] as? String == "web", "\(header)")
            #expect(header["asserted_by"] as? String == "192.0.2.10", "\(header)")
            #expect(header["ssl"] == nil, "no TLS, no TLV 0x20: \(header)")
            let probe = try await lab.runTool(.a, ["probe", "--port", "7107", "--timeout", "20"], seconds: 30)
            #expect(probe.status == 0, "netvm admitted by its stamped id: \(probe.output)\n\(lab.gatewayLogs)")

            let before = try await Self.deniedBefore(lab)
            let other = try await lab.runTool(.a, ["proxy-check", "--port", "7101", "--bytes", "1000"], seconds: 30)
            #expect(other.status != 0, "other: \(other.output)")
            try await Self.expectDenied(lab, since: before, "other@192.0.2.10")

            func direct(from host: TwoHostLab.Host, port: Int, _ arguments: [String]) async throws -> [String: Any] {
                let attempt = try await lab.runTool(
                    host,
                    ["tls-check", "--plain", "--host", "198.51.100.10", "--port", "\(port)"] + arguments,
                    seconds: 40
                )
                return try #require(jsonObject(attempt.output), "\(attempt.output)")
            }
            func counts() async throws -> [String: Int] { try await lab.outcomes(.b, "netvm", side: "import") }
            let forged = ["--proxy-domain-id", "2", "--proxy-domain-name", "web"]

            // Host A (trusted) without a header: refused before anything is opened.
            var importsBefore = try await counts()
            var outcome = try await direct(from: .a, port: 5434, ["--expect-header"])
            #expect(outcome["ok"] as? Bool == false && outcome["echoed"] as? Int == 0, "no header: \(outcome)")
            var changes = try await outcomeChanges(since: importsBefore, until: "proxy_header_refused", counts)
            #expect(changes == ["proxy_header_refused": 1], "no header from 192.0.2.10: \(changes)")

            // Host B's own address (not trusted): its own bytes go through, its header not.
            outcome = try await direct(from: .b, port: 5435, [])
            #expect(outcome["ok"] as? Bool == true, "an untrusted client's own bytes: \(outcome)\n\(lab.gatewayLogs)")
            importsBefore = try await counts()
            outcome = try await direct(from: .b, port: 5435, forged)
            #expect(outcome["ok"] as? Bool == false && outcome["echoed"] as? Int == 0, "forged header: \(outcome)")
            changes = try await outcomeChanges(since: importsBefore, until: "proxy_header_refused", counts)
            changes["opened"] = nil
            #expect(changes == ["proxy_header_refused": 1], "a header from 198.51.100.10: \(changes)")
            #expect(
                try lab.gateway(.b, "netvm").log.contains("proxy_header_refused"),
                "B's netvm log names the outcome: \(lab.gatewayLogs)"
            )
            #expect(
                server.output.components(separatedBy: "header ").count - 1 == 1,
                "only web's connection reached the target: \(server.output)"
            )
            #expect(await lab.stopGateways() == [], "\(lab.gatewayLogs)")
        }

        /// The 64-hex-digit digests in two files, once both are there (tee's process
        /// substitution may finish a moment after the pipeline).
        static func digests(_ first: String, _ second: String) async -> (String?, String?) {
            func digest(_ path: String) -> String? {
                let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
                return text.count >= 64 ? String(text.prefix(64)) : nil
            }
            _ = await eventually(within: 10) { digest(first) != nil && digest(second) != nil }
            return (digest(first), digest(second))
        }

        /// web uploads 256 MiB to a socat sink behind db, then downloads 64 MiB from a socat
        /// source there (two services of the chain); each end keeps the sha256 of what it
        /// sent or received.
        @Test(
            "256 MiB from web to db and 64 MiB back across the hosts through TLS, sha256 equal at both ends",
            .timeLimit(.minutes(9))
        )
        func bulk() async throws {
            let lab = try await TwoHostLab()
            let certificates = try await TestCertificates(in: lab.directory.path)
            let (a, b) = (lab.folder(.a), lab.folder(.b))
            let (upload, download) = (256 << 20, 64 << 20)
            let receiver = try lab.shell(
                .b,
                "socat -u TCP-LISTEN:7001,bind=127.0.0.1,reuseaddr - | sha256sum > \(b)/upload.received"
            )
            let source = try lab.shell(
                .b,
                "head -c \(download) /dev/urandom | tee >(sha256sum > \(b)/download.sent)"
                    + " | socat -u - TCP-LISTEN:7002,bind=127.0.0.1,reuseaddr"
            )
            try await Self.start(
                lab,
                certificates,
                services: [
                    .init(name: "upload", port: 7001, linkPort: 5441, webPort: 7101, target: "tcp://127.0.0.1:7001"),
                    .init(name: "download", port: 7002, linkPort: 5442, webPort: 7102, target: "tcp://127.0.0.1:7002"),
                ]
            )
            let sender = try lab.shell(
                .a,
                "head -c \(upload) /dev/urandom | tee >(sha256sum > \(a)/upload.sent) | socat -u - TCP:127.0.0.1:7101"
            )
            #expect(await sender.wait(seconds: 300) == 0, "upload sender: \(sender.log)\n\(lab.gatewayLogs)")
            #expect(await receiver.wait(seconds: 60) == 0, "the upload's end did not arrive: \(receiver.log)")
            let (sent, received) = await Self.digests("\(a)/upload.sent", "\(b)/upload.received")
            #expect(sent != nil && sent == received, "upload: sent \(sent ?? "-"), received \(received ?? "-")")

            // The download's source speaks first, the client never: A's netvm must send its
            // PROXY header at once, not with the client's first bytes (B's listener waits
            // for it up to handshake_timeout, then counts proxy_header_refused).
            let downloader = try lab.shell(.a, "socat -u TCP:127.0.0.1:7102 - | sha256sum > \(a)/download.received")
            #expect(await downloader.wait(seconds: 120) == 0, "download: \(downloader.log)\n\(lab.gatewayLogs)")
            #expect(await source.wait(seconds: 30) == 0, "download source: \(source.log)")
            let (served, fetched) = await Self.digests("\(b)/download.sent", "\(a)/download.received")
            #expect(
                served != nil && served == fetched,
                "download: sent \(served ?? "-"), received \(fetched ?? "-")\n\(lab.gatewayLogs)"
            )

            // Both went through the TLS listener, and no handshake or header failed.
            let listener = try await lab.outcomes(.b, "netvm", side: "import")
            #expect(listener["opened", default: 0] >= 2, "\(listener)")
            let failed = listener.filter { ($0.key.hasPrefix("tls_") || $0.key.hasPrefix("proxy_")) && $0.value > 0 }
            #expect(failed.isEmpty, "\(listener)")
            #expect(await lab.stopGateways() == [], "\(lab.gatewayLogs)")
        }
    }
}
