// SPDX-License-Identifier: Apache-2.0
import Foundation
import HMXProcessTestSupport
import Testing

/// The throwaway certificates `Tools/make_certs.sh` makes in a lab's directory, by
/// name: the test CA `ca` and an unrelated one, `other-ca`; servers `localhost` (DNS
/// localhost, IP 127.0.0.1), `localhost-2` (the same names, another key) and `host-b`
/// (host-b.example, 198.51.100.10); clients `netvm-a` (CN netvm-a.example) and
/// `other-a` (other-a.example); `expired-client` and `expired-server` (valid in 2020
/// only); `other-client` (CN netvm-a.example) and `other-server`, signed by the
/// unrelated CA.
struct TestCertificates {
    static let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent(
        "Tools/make_certs.sh"
    ).path

    let directory: String

    /// Makes them in `parent`/certs.
    init(in parent: String) async throws {
        self.directory = "\(parent)/certs"
        let made = try await HMXProcessTestSupport.run("/bin/bash", [Self.script, self.directory], seconds: 60)
        try #require(made.status == 0, "Tools/make_certs.sh: \(made.output)")
    }

    /// The certificate `name` (PEM).
    func pem(_ name: String) -> String { "\(self.directory)/\(name).pem" }

    /// Its private key (PEM).
    func key(_ name: String) -> String { "\(self.directory)/\(name).key" }

    /// Its SHA-256 fingerprint as `openssl x509 -fingerprint -sha256` writes it.
    func fingerprint(_ name: String) throws -> String {
        try String(contentsOfFile: "\(self.directory)/\(name).sha256", encoding: .utf8).trimmingCharacters(
            in: .whitespacesAndNewlines
        )
    }

    /// An import's `tls:` line: a listener that serves `certificate`, asks for client
    /// certificates signed by `clientCA` if given.
    func listener(_ certificate: String, clientCA: String? = nil, handshakeTimeout: String? = nil) -> String {
        var fields = ["certificate: \(self.pem(certificate))", "key: \(self.key(certificate))"]
        if let clientCA { fields.append("client_ca: \(self.pem(clientCA))") }
        if let handshakeTimeout { fields.append("handshake_timeout: \(handshakeTimeout)") }
        return "tls: {\(fields.joined(separator: ", "))}"
    }

    /// An export's `tls:` line: a client that trusts `ca`, wants `serverName` (if
    /// given) and shows the client certificate `client` (if given).
    func target(
        ca: String = "ca",
        serverName: String? = nil,
        verifyHostname: Bool? = nil,
        client: String? = nil
    ) -> String {
        var fields = ["ca: \(self.pem(ca))"]
        if let serverName { fields.append("server_name: \(serverName)") }
        if let verifyHostname { fields.append("verify_hostname: \(verifyHostname)") }
        if let client { fields += ["certificate: \(self.pem(client))", "key: \(self.key(client))"] }
        return "tls: {\(fields.joined(separator: ", "))}"
    }
}

/// The connection outcomes among a gateway's metrics, by outcome: `side` "import" is
/// `hmx_import_connections_total` (connections to its listeners), "export" is
/// `hmx_export_connections_total` (connections it dials).
func outcomeCounts(_ metrics: [String: Double], side: String) -> [String: Int] {
    let prefix = "hmx_\(side)_connections_total{outcome=\""
    var counts: [String: Int] = [:]
    for (key, value) in metrics where key.hasPrefix(prefix) && key.hasSuffix("\"}") {
        counts[String(key.dropFirst(prefix.count).dropLast(2))] = Int(value)
    }
    return counts
}

/// Reads `counts` until `outcome` has been counted since `before` (for at most
/// `seconds`), then once more; returns every outcome whose count changed since `before`,
/// by how much (empty if nothing was counted).
func outcomeChanges(
    since before: [String: Int],
    until outcome: String,
    within seconds: Double = 15,
    _ counts: () async throws -> [String: Int]
) async throws -> [String: Int] {
    var latest = before
    let counted = try await eventually(within: seconds) {
        latest = try await counts()
        if latest[outcome, default: 0] > before[outcome, default: 0] { return true }
        try? await Task.sleep(for: .milliseconds(200))
        return false
    }
    // Anything else counted for the same connection comes with it or just after.
    if counted {
        try await Task.sleep(for: .milliseconds(300))
        latest = try await counts()
    }
    var changes: [String: Int] = [:]
    for name in Set(before.keys).union(latest.keys) where latest[name, default: 0] != before[name, default: 0] {
        changes[name] = latest[name, default: 0] - before[name, default: 0]
    }
    return changes
}

extension GatewayEndToEndTests {
    /// `tls://` import listeners and export targets (`Tools/make_certs.sh`'s
    /// certificates): who gets through, and every refusal counted as its own outcome and
    /// named in the gateway's log.
    @Suite("TLS endpoints")
    struct TLSEndpoints {
        /// An HTTP server in beta on `port` serving `hello.txt`; returns the file's text.
        static func startWebServer(_ lab: GatewayLab, port: Int) async throws -> String {
            let folder = "\(lab.directory.path)/www"
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
            let page = "hello over TLS \(UUID().uuidString)\n"
            try page.write(toFile: "\(folder)/hello.txt", atomically: true, encoding: .utf8)
            let server = try lab.spawn(
                .beta,
                "python3",
                ["-u", "-m", "http.server", "\(port)", "--bind", "127.0.0.1", "--directory", folder]
            )
            let serving = await eventually(within: 10) { server.output.contains("Serving HTTP") }
            try #require(serving, "\(server.log)")
            return page
        }

        /// `curl` in alpha for `https://localhost:PORT/hello.txt` (localhost pinned to
        /// 127.0.0.1), trusting `ca`, with the client certificate `client` if given.
        static func curl(
            _ lab: GatewayLab,
            _ certificates: TestCertificates,
            port: Int,
            ca: String = "ca",
            client: String? = nil,
            host: String = "localhost"
        ) async throws -> (status: Int32?, output: String) {
            var arguments = [
                "-sS", "--max-time", "20", "--resolve", "localhost:\(port):127.0.0.1", "--cacert", certificates.pem(ca),
            ]
            if let client { arguments += ["--cert", certificates.pem(client), "--key", certificates.key(client)] }
            return try await lab.run(.alpha, "curl", arguments + ["https://\(host):\(port)/hello.txt"], seconds: 30)
        }

        /// The fingerprint of the certificate a new `openssl s_client` connection from
        /// alpha to `port` is served (verified against `ca`), nil if none.
        static func servedFingerprint(_ lab: GatewayLab, port: Int, ca: String) async throws -> String? {
            let script = """
                openssl s_client -connect 127.0.0.1:\(port) -servername localhost -CAfile \(ca) </dev/null 2>/dev/null \
                | openssl x509 -noout -fingerprint -sha256
                """
            let result = try await lab.run(.alpha, "/bin/bash", ["-c", script], seconds: 20)
            guard result.status == 0, let line = result.output.split(separator: "\n").first(where: { $0.contains("=") })
            else { return nil }
            return line.split(separator: "=").last.map(String.init)
        }

        /// Alpha's metrics and beta's, for ``startGateways``' `extra`.
        static func metrics(alpha: Int, beta: Int) -> [GatewayLab.Domain: String] {
            [
                .alpha: "metrics:\n  listen: tcp://127.0.0.1:\(alpha)\n",
                .beta: "metrics:\n  listen: tcp://127.0.0.1:\(beta)\n",
            ]
        }

        /// A client that connects and never says anything: how its connection ended and
        /// after how many seconds.
        static let silentClient = """
            import socket, sys, time
            s = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=15); start = time.monotonic()
            try:
                end = 'eof' if not s.recv(100) else 'bytes'
            except OSError as error:
                end = type(error).__name__
            print(f'{end} after {time.monotonic() - start:.2f}')
            """

        /// The listener serves the test CA's `localhost` certificate, `handshake_timeout: 2s`.
        /// A client that trusts another CA aborts its handshake; the gateway counts that,
        /// plain text, and a client that stays silent for 2 s as tls_handshake_failed.
        @Test(
            "a tls:// listener serves curl and s_client; distrusting, plain or silent clients: tls_handshake_failed",
            .timeLimit(.minutes(2))
        )
        func listener() async throws {
            let lab = try await GatewayLab()
            let certificates = try await TestCertificates(in: lab.directory.path)
            let page = try await Self.startWebServer(lab, port: lab.port(60))
            let port = lab.port(61)
            let metricsPort = lab.port(62)
            try await lab.startGateways(
                exports: [.init(name: "web", port: 80, target: "tcp://127.0.0.1:\(lab.port(60))")],
                imports: [
                    .init(
                        name: "web",
                        listen: "tls://127.0.0.1:\(port)",
                        port: 80,
                        extra: [certificates.listener("localhost", handshakeTimeout: "2s")]
                    )
                ],
                extra: Self.metrics(alpha: metricsPort, beta: lab.port(63))
            )
            let alpha = try #require(lab.gateways[.alpha])
            func counts() async throws -> [String: Int] {
                outcomeCounts(try await lab.metrics(.alpha, port: metricsPort), side: "import")
            }

            // The refusals first: each alone in the counters while it is counted.
            var before = try await counts()
            let distrusting = try await Self.curl(lab, certificates, port: port, ca: "other-ca")
            #expect(distrusting.status == 60, "curl: the server's certificate is not trusted: \(distrusting.output)")
            #expect(!distrusting.output.contains(page))
            var changes = try await outcomeChanges(since: before, until: "tls_handshake_failed", counts)
            #expect(changes == ["tls_handshake_failed": 1], "the client gave up: \(changes)\n\(alpha.log)")
            #expect(alpha.log.contains("tls_handshake_failed"), "\(alpha.log)")

            before = try await counts()
            let plain = try await lab.runTool(.alpha, ["refused", "--port", "\(port)", "--timeout", "10"], seconds: 20)
            let plainEnd = try #require(jsonObject(plain.output), "\(plain.output)")
            // (A TLS alert may come back before the close.)
            #expect(plainEnd["end"] as? String != "timeout", "closed at once: \(plainEnd)")
            changes = try await outcomeChanges(since: before, until: "tls_handshake_failed", counts)
            #expect(changes == ["tls_handshake_failed": 1], "plain text to a TLS listener: \(changes)\n\(alpha.log)")

            before = try await counts()
            let silent = try await lab.run(.alpha, "python3", ["-c", Self.silentClient, "\(port)"], seconds: 30)
            let seconds = silent.output.split(separator: " ").last.flatMap {
                Double($0.trimmingCharacters(in: .newlines))
            }
            #expect((1.5...9).contains(seconds ?? -1), "closed after handshake_timeout (2 s): \(silent.output)")
            changes = try await outcomeChanges(since: before, until: "tls_handshake_failed", counts)
            #expect(changes == ["tls_handshake_failed": 1], "no handshake within 2 s: \(changes)\n\(alpha.log)")

            // Then the clients that trust the test CA: by name and by address.
            for host in ["localhost", "127.0.0.1"] {
                let fetched = try await Self.curl(lab, certificates, port: port, host: host)
                #expect(
                    fetched.status == 0 && fetched.output == page,
                    "curl https://\(host): \(fetched.output)\n\(lab.gatewayLogs)"
                )
            }
            let request = try lab.directory.write("request", "GET /hello.txt HTTP/1.0\r\nHost: localhost\r\n\r\n")
            let openssl = try lab.spawn(
                .alpha,
                "openssl",
                [
                    "s_client", "-connect", "127.0.0.1:\(port)", "-servername", "localhost", "-verify_hostname",
                    "localhost", "-CAfile", certificates.pem("ca"), "-verify_return_error", "-ign_eof",
                ],
                standardInput: request
            )
            #expect(await openssl.wait(seconds: 30) == 0, "openssl s_client: \(openssl.log)\n\(lab.gatewayLogs)")
            #expect(openssl.output.contains("Verify return code: 0 (ok)"), "\(openssl.output)")
            #expect(openssl.output.contains("HTTP/1.0 200") && openssl.output.contains(page), "\(openssl.output)")
            let served = try await Self.servedFingerprint(lab, port: port, ca: certificates.pem("ca"))
            let expected = try certificates.fingerprint("localhost")
            #expect(served == expected, "the listener's certificate")
            #expect(await lab.stopGateways() == [], "\(lab.gatewayLogs)")
        }

        /// `client_ca: ca.pem`: the test CA's client certificates get the page; an expired
        /// one is tls_expired, none tls_no_client_certificate, one from another CA (with
        /// the trusted name netvm-a.example) tls_untrusted. (With TLS 1.3 the client
        /// finishes its handshake before the server judges its certificate: curl sees the
        /// refusal as an alert or a close when it reads.)
        @Test(
            "client_ca: the CA's clients get in; expired, none or another CA's are each counted as their own outcome",
            .timeLimit(.minutes(2))
        )
        func clientCertificates() async throws {
            let lab = try await GatewayLab()
            let certificates = try await TestCertificates(in: lab.directory.path)
            let page = try await Self.startWebServer(lab, port: lab.port(64))
            let port = lab.port(65)
            let metricsPort = lab.port(66)
            try await lab.startGateways(
                exports: [.init(name: "web", port: 80, target: "tcp://127.0.0.1:\(lab.port(64))")],
                imports: [
                    .init(
                        name: "web",
                        listen: "tls://127.0.0.1:\(port)",
                        port: 80,
                        extra: [certificates.listener("localhost", clientCA: "ca")]
                    )
                ],
                extra: Self.metrics(alpha: metricsPort, beta: lab.port(67))
            )
            let alpha = try #require(lab.gateways[.alpha])
            func counts() async throws -> [String: Int] {
                outcomeCounts(try await lab.metrics(.alpha, port: metricsPort), side: "import")
            }

            let refusals: [(client: String?, outcome: String)] = [
                ("expired-client", "tls_expired"),
                (nil, "tls_no_client_certificate"),
                ("other-client", "tls_untrusted"),
            ]
            for (client, outcome) in refusals {
                let before = try await counts()
                let fetched = try await Self.curl(lab, certificates, port: port, client: client)
                #expect(
                    fetched.status != 0 && !fetched.output.contains(page),
                    "client certificate \(client ?? "none"): \(fetched.output)"
                )
                let changes = try await outcomeChanges(since: before, until: outcome, counts)
                #expect(changes == [outcome: 1], "client certificate \(client ?? "none"): \(changes)\n\(alpha.log)")
                #expect(alpha.log.contains(outcome), "the log names \(outcome): \(alpha.log)")
            }
            for client in ["netvm-a", "other-a"] {
                let fetched = try await Self.curl(lab, certificates, port: port, client: client)
                #expect(
                    fetched.status == 0 && fetched.output == page,
                    "client certificate \(client): \(fetched.output)\n\(lab.gatewayLogs)"
                )
            }
            #expect(await lab.stopGateways() == [], "\(lab.gatewayLogs)")
        }

        /// beta's exports dial TLS echo servers: verified by address, by `server_name`, with
        /// a client certificate, and `server_name: wrong.example` with
        /// `verify_hostname: false` all echo. The refusals are counted by beta (the dialling
        /// side) as their own outcome; alpha, behind HMX, sees target_refused.
        @Test(
            "tls:// targets: verified servers echo; a wrong name, expired, another CA's: each counted as its outcome",
            .timeLimit(.minutes(3))
        )
        func targets() async throws {
            let lab = try await GatewayLab()
            let certificates = try await TestCertificates(in: lab.directory.path)
            let (plainServer, mutualServer, expiredServer, foreignServer) = (
                lab.port(70), lab.port(71), lab.port(72), lab.port(73)
            )
            func server(_ port: Int, _ certificate: String, clientCA: String? = nil) async throws -> ChildProcess {
                var arguments = [
                    "tls-echo-server", "--port", "\(port)", "--cert", certificates.pem(certificate), "--key",
                    certificates.key(certificate),
                ]
                if let clientCA { arguments += ["--client-ca", certificates.pem(clientCA)] }
                return try await lab.startToolServer(.beta, arguments)
            }
            _ = try await server(plainServer, "localhost")
            let mutual = try await server(mutualServer, "localhost", clientCA: "ca")
            _ = try await server(expiredServer, "expired-server")
            _ = try await server(foreignServer, "other-server")
            // (name, target port, tls settings, what the export counts; nil: it works)
            let cases: [(String, Int, String, String?)] = [
                ("by-address", plainServer, certificates.target(), nil),
                ("by-name", plainServer, certificates.target(serverName: "localhost"), nil),
                ("mutual", mutualServer, certificates.target(serverName: "localhost", client: "netvm-a"), nil),
                ("mismatch", plainServer, certificates.target(serverName: "wrong.example"), "tls_hostname_mismatch"),
                ("lenient", plainServer, certificates.target(serverName: "wrong.example", verifyHostname: false), nil),
                ("expired", expiredServer, certificates.target(serverName: "localhost"), "tls_expired"),
                ("untrusted", foreignServer, certificates.target(serverName: "localhost"), "tls_untrusted"),
            ]
            let (alphaMetrics, betaMetrics) = (lab.port(81), lab.port(82))
            try await lab.startGateways(
                exports: cases.enumerated().map { index, entry in
                    .init(
                        name: entry.0,
                        port: 9101 + index,
                        target: "tls://127.0.0.1:\(entry.1)",
                        extra: [entry.2]
                    )
                },
                imports: cases.enumerated().map { index, entry in
                    .init(name: entry.0, listen: "tcp://127.0.0.1:\(lab.port(74 + index))", port: 9101 + index)
                },
                extra: Self.metrics(alpha: alphaMetrics, beta: betaMetrics)
            )
            let beta = try #require(lab.gateways[.beta])
            func counts(_ domain: GatewayLab.Domain) async throws -> [String: Int] {
                let port = domain == .alpha ? alphaMetrics : betaMetrics
                return outcomeCounts(
                    try await lab.metrics(domain, port: port),
                    side: domain == .alpha ? "import" : "export"
                )
            }

            // The refusals first, one at a time.
            for (index, (name, _, _, expected)) in cases.enumerated() {
                guard let expected else { continue }
                let (alphaBefore, betaBefore) = (try await counts(.alpha), try await counts(.beta))
                let result = try await lab.runTool(
                    .alpha,
                    ["refused", "--port", "\(lab.port(74 + index))", "--timeout", "10"],
                    seconds: 20
                )
                let end = try #require(jsonObject(result.output), "\(name): \(result.output)")
                #expect(
                    end["connected"] as? Bool == true && end["bytes"] as? Int == 0
                        && end["end"] as? String != "timeout",
                    "\(name): closed without a byte: \(end)"
                )
                let betaChanges = try await outcomeChanges(since: betaBefore, until: expected) {
                    try await counts(.beta)
                }
                #expect(
                    betaChanges == [expected: 1],
                    "\(name): the exporting gateway counts \(expected): \(betaChanges)"
                )
                #expect(beta.log.contains(expected), "\(name): the log names \(expected): \(beta.log)")
                let alphaChanges = try await outcomeChanges(since: alphaBefore, until: "target_refused") {
                    try await counts(.alpha)
                }
                #expect(alphaChanges == ["target_refused": 1], "\(name): the importer's side: \(alphaChanges)")
            }
            for (index, (name, _, _, expected)) in cases.enumerated() where expected == nil {
                let probe = try await lab.runTool(
                    .alpha,
                    ["probe", "--port", "\(lab.port(74 + index))", "--timeout", "20"],
                    seconds: 30
                )
                #expect(probe.status == 0, "\(name): \(probe.output)\n\(lab.gatewayLogs)")
            }
            #expect(mutual.output.contains("client netvm-a.example"), "the export's client certificate: \(mutual.log)")
            #expect(await lab.stopGateways() == [], "\(lab.gatewayLogs)")
        }

        /// `proxy_protocol: accept` with `trusted_proxies: [netvm-a.example]` on tls://
        /// listeners; beta's exports admit `web@netvm-a.example` and `*@netvm-a.example`
        /// relayed by alpha. netvm-a.example's header is believed and reaches the target as
        /// TLVs 0x20 (its certificate), 0xE2 (the asserted domain) and 0xE3 (who asserted
        /// it); netvm-a.example without a header, and a header from other-a.example, are
        /// proxy_header_refused, while other-a.example's own bytes pass; its own bytes to
        /// beta's `web@` export, and netvm-a.example asserting db, are denied by beta's
        /// allow-list.
        @Test(
            "proxy_protocol: accept over TLS: a trusted client's header becomes TLVs; others are proxy_header_refused",
            .timeLimit(.minutes(3))
        )
        func proxyHeaders() async throws {
            let lab = try await GatewayLab()
            let certificates = try await TestCertificates(in: lab.directory.path)
            let target = lab.port(83)
            let (exact, wildcard, echoing) = (lab.port(84), lab.port(85), lab.port(88))
            let (alphaMetrics, betaMetrics) = (lab.port(86), lab.port(87))
            let server = try await lab.startToolServer(.beta, ["proxy-echo-server", "--port", "\(target)"])
            let accept = [
                certificates.listener("localhost", clientCA: "ca"), "proxy_protocol: accept",
                "trusted_proxies: [netvm-a.example]",
            ]
            try await lab.startGateways(
                exports: [
                    .init(
                        name: "exact",
                        port: 9020,
                        target: "tcp://127.0.0.1:\(target)",
                        allow: ["\"web@netvm-a.example\""],
                        extra: ["relays: [alpha]", "proxy_protocol: v2"]
                    ),
                    .init(
                        name: "wildcard",
                        port: 9021,
                        target: "tcp://127.0.0.1:\(target)",
                        allow: ["\"*@netvm-a.example\""],
                        extra: ["relays: [alpha]", "proxy_protocol: v2"]
                    ),
                ],
                imports: [
                    .init(name: "exact", listen: "tls://127.0.0.1:\(exact)", port: 9020, extra: accept),
                    .init(name: "wildcard", listen: "tls://127.0.0.1:\(wildcard)", port: 9021, extra: accept),
                    // The lab's echo service (alpha by its stamped id).
                    .init(name: "open", listen: "tls://127.0.0.1:\(echoing)", port: 7, extra: accept),
                ],
                extra: Self.metrics(alpha: alphaMetrics, beta: betaMetrics)
            )
            let alpha = try #require(lab.gateways[.alpha])
            func counts(_ domain: GatewayLab.Domain) async throws -> [String: Int] {
                let port = domain == .alpha ? alphaMetrics : betaMetrics
                return outcomeCounts(
                    try await lab.metrics(domain, port: port),
                    side: domain == .alpha ? "import" : "export"
                )
            }
            func check(_ port: Int, client: String, domain: String?) async throws -> [String: Any] {
                var arguments = [
                    "tls-check", "--port", "\(port)", "--cafile", certificates.pem("ca"), "--cert",
                    certificates.pem(client), "--key", certificates.key(client), "--bytes", "100000",
                ]
                if port != echoing { arguments.append("--expect-header") }
                if let domain { arguments += ["--proxy-domain-id", "2", "--proxy-domain-name", domain] }
                let result = try await lab.runTool(.alpha, arguments, seconds: 40)
                return try #require(jsonObject(result.output), "\(result.output)")
            }

            // A trusted proxy without its header: refused before anything is opened.
            var before = try await counts(.alpha)
            var result = try await check(exact, client: "netvm-a", domain: nil)
            #expect(result["ok"] as? Bool == false && result["echoed"] as? Int == 0, "no header: \(result)")
            var changes = try await outcomeChanges(since: before, until: "proxy_header_refused") {
                try await counts(.alpha)
            }
            #expect(changes == ["proxy_header_refused": 1], "no header: \(changes)\n\(alpha.log)")
            #expect(!server.output.contains("header"), "nothing reached the target: \(server.output)")

            // A client not trusted to send a header: its own bytes go through (to the echo
            // service, which admits alpha), but a header from it is refused, not passed on.
            // (The connection may have been opened before the header came: "opened" may
            // be counted too, nothing else.)
            result = try await check(echoing, client: "other-a", domain: nil)
            #expect(result["ok"] as? Bool == true, "an untrusted client's own bytes: \(result)\n\(alpha.log)")
            before = try await counts(.alpha)
            result = try await check(echoing, client: "other-a", domain: "web")
            #expect(result["ok"] as? Bool == false && result["echoed"] as? Int == 0, "forged header: \(result)")
            changes = try await outcomeChanges(since: before, until: "proxy_header_refused") {
                try await counts(.alpha)
            }
            changes["opened"] = nil
            #expect(changes == ["proxy_header_refused": 1], "forged header: \(changes)\n\(alpha.log)")
            #expect(alpha.log.contains("proxy_header_refused"), "\(alpha.log)")

            // Through the listener, refused by beta's allow-list: other-a.example's own
            // bytes (it asserts nothing), and netvm-a.example asserting db.
            let denials: [(client: String, domain: String?, why: String)] = [
                ("other-a", nil, "a client that asserts no domain"),
                ("netvm-a", "db", "netvm-a.example asserting db, not web"),
            ]
            for (client, domain, why) in denials {
                let before = try await counts(.beta)
                let result = try await check(exact, client: client, domain: domain)
                #expect(result["ok"] as? Bool == false && result["echoed"] as? Int == 0, "\(why): \(result)")
                let changes = try await outcomeChanges(since: before, until: "denied_by_gateway_policy") {
                    try await counts(.beta)
                }
                #expect(changes == ["denied_by_gateway_policy": 1], "\(why): \(changes)\n\(lab.gatewayLogs)")
            }

            // Admitted: web@netvm-a.example by name, db@netvm-a.example by *@netvm-a.example.
            for (port, domain) in [(exact, "web"), (wildcard, "db")] {
                let result = try await check(port, client: "netvm-a", domain: domain)
                #expect(result["ok"] as? Bool == true && result["echoed"] as? Int == 100_000, "\(result)")
                let header = try #require(result["header"] as? [String: Any], "\(result)\n\(lab.gatewayLogs)")
                #expect(header["domain_id"] as? Int == GatewayLab.Domain.alpha.id, "stamped: the relay, \(header)")
                #expect(header["domain_name"] as? String == "alpha", "\(header)")
                #expect(header["asserted_domain"] as? String == domain, "\(header)")
                #expect(header["asserted_by"] as? String == "netvm-a.example", "\(header)")
                let ssl = try #require(header["ssl"] as? [String: Any], "TLV 0x20: \(header)")
                #expect(ssl["client"] as? Int == 0x07 && ssl["verify"] as? Int == 0, "\(ssl)")
                #expect(ssl["cn"] as? String == "netvm-a.example", "\(ssl)")
                #expect((ssl["version"] as? String)?.hasPrefix("TLSv1.") == true, "\(ssl)")
                #expect(ssl["error"] == nil, "\(ssl)")
            }
            #expect(await lab.stopGateways() == [], "\(lab.gatewayLogs)")
        }

        /// A tcp:// listener with `proxy_protocol: accept` trusting 127.0.0.0/8: each client
        /// sends its header, 64 KiB and its FIN at once (what a relaying gateway does with a
        /// short request), twenty times; the target must get the bytes in order every time,
        /// and the caller as web asserted by 127.0.0.1, without TLV 0x20 (no TLS).
        @Test(
            "proxy_protocol: accept on tcp://: header, bytes, FIN at once stay in order; none: proxy_header_refused",
            .timeLimit(.minutes(2))
        )
        func plainProxyAccept() async throws {
            let lab = try await GatewayLab()
            let target = lab.port(89)
            let port = lab.port(90)
            let metricsPort = lab.port(91)
            let server = try await lab.startToolServer(.beta, ["proxy-echo-server", "--port", "\(target)"])
            try await lab.startGateways(
                exports: [
                    .init(
                        name: "who",
                        port: 9030,
                        target: "tcp://127.0.0.1:\(target)",
                        allow: ["\"web@127.0.0.1\""],
                        extra: ["relays: [alpha]", "proxy_protocol: v2"]
                    )
                ],
                imports: [
                    .init(
                        name: "who",
                        listen: "tcp://127.0.0.1:\(port)",
                        port: 9030,
                        extra: ["proxy_protocol: accept", "trusted_proxies: [127.0.0.0/8]"]
                    )
                ],
                extra: [.alpha: "metrics:\n  listen: tcp://127.0.0.1:\(metricsPort)\n"]
            )
            let alpha = try #require(lab.gateways[.alpha])
            var failures: [String] = []
            var header: [String: Any] = [:]
            for _ in 0..<20 {
                let result = try await lab.runTool(
                    .alpha,
                    [
                        "tls-check", "--plain", "--half-close", "--port", "\(port)", "--proxy-domain-id", "2",
                        "--proxy-domain-name", "web", "--expect-header", "--bytes", "65536",
                    ],
                    seconds: 30
                )
                let outcome = try #require(jsonObject(result.output), "\(result.output)")
                if outcome["ok"] as? Bool != true { failures.append("\(outcome)") }
                header = outcome["header"] as? [String: Any] ?? [:]
            }
            #expect(header["asserted_domain"] as? String == "web", "\(header)")
            #expect(header["asserted_by"] as? String == "127.0.0.1", "\(header)")
            #expect(header["ssl"] == nil, "no TLS, no TLV 0x20: \(header)")
            #expect(failures.isEmpty, "\(failures.count) of 20 echoed out of order or short: \(failures.prefix(3))")

            let before = outcomeCounts(try await lab.metrics(.alpha, port: metricsPort), side: "import")
            let headerless = try await lab.runTool(
                .alpha,
                ["tls-check", "--plain", "--port", "\(port)", "--expect-header", "--bytes", "1000"],
                seconds: 30
            )
            let outcome = try #require(jsonObject(headerless.output), "\(headerless.output)")
            #expect(outcome["ok"] as? Bool == false && outcome["echoed"] as? Int == 0, "\(outcome)")
            let changes = try await outcomeChanges(since: before, until: "proxy_header_refused") {
                outcomeCounts(try await lab.metrics(.alpha, port: metricsPort), side: "import")
            }
            #expect(
                changes == ["proxy_header_refused": 1],
                "a trusted source without a header: \(changes)\n\(alpha.log)"
            )
            #expect(
                server.output.components(separatedBy: "header ").count - 1 == 20,
                "only the 20 clients with a header reached the target"
            )
            #expect(await lab.stopGateways() == [], "\(lab.gatewayLogs)")
        }

        /// The last `progress N` a `tls-stream` said (bytes echoed so far).
        static func progress(_ output: String) -> Int {
            output.split(separator: "\n").last { $0.hasPrefix("progress ") }.flatMap { Int($0.dropFirst(9)) } ?? 0
        }

        /// The listener's certificate and key files are replaced (localhost-2: the same names,
        /// another key) while a TLS stream runs through it; after SIGHUP new clients get the
        /// new certificate and the stream goes on with the old one, every byte checked. A
        /// broken key file then: SIGHUP is refused naming the file, the certificate loaded
        /// before it is still served.
        @Test(
            "SIGHUP reloads certificate and key: open streams go on, new clients get it; a broken key keeps the old",
            .timeLimit(.minutes(3))
        )
        func rotation() async throws {
            let lab = try await GatewayLab()
            let certificates = try await TestCertificates(in: lab.directory.path)
            let certificate = "\(lab.directory.path)/listener.pem"
            let key = "\(lab.directory.path)/listener.key"
            func install(_ name: String) throws {
                for (from, to) in [(certificates.pem(name), certificate), (certificates.key(name), key)] {
                    try Data(contentsOf: URL(fileURLWithPath: from)).write(to: URL(fileURLWithPath: to))
                }
            }
            try install("localhost")
            let port = lab.port(68)
            let ca = certificates.pem("ca")
            try await lab.startGateways(
                imports: [
                    .init(
                        name: "secure",
                        listen: "tls://127.0.0.1:\(port)",
                        port: 7,
                        extra: ["tls: {certificate: \(certificate), key: \(key)}"]
                    )
                ]
            )
            let alpha = try #require(lab.gateways[.alpha])
            let old = try certificates.fingerprint("localhost")
            let new = try certificates.fingerprint("localhost-2")
            let first = try await Self.servedFingerprint(lab, port: port, ca: ca)
            #expect(first == old, "\(alpha.log)")

            let go = "\(lab.directory.path)/go-after-rotation"
            let stream = try lab.tool(
                .alpha,
                [
                    "tls-stream", "--port", "\(port)", "--cafile", ca, "--go", go, "--rate", "\(4 << 20)", "--timeout",
                    "120",
                ]
            )
            let streaming = await eventually(within: 20) { stream.output.contains("streaming") }
            try #require(streaming, "\(stream.log)\n\(lab.gatewayLogs)")

            try install("localhost-2")
            alpha.signal(SIGHUP)
            let rotated = try await eventually(within: 20) {
                if try await Self.servedFingerprint(lab, port: port, ca: ca) == new { return true }
                try? await Task.sleep(for: .milliseconds(200))
                return false
            }
            #expect(rotated, "new connections get localhost-2.pem: \(alpha.log)")
            // The stream opened before the reload goes on after it (4 MiB/s): 4 MiB more.
            let echoedAtRotation = Self.progress(stream.output)
            let flowing = await eventually(within: 20) {
                Self.progress(stream.output) >= echoedAtRotation + (4 << 20)
            }
            #expect(flowing, "the stream goes on across the reload: \(stream.output.suffix(300))")
            #expect(stream.isRunning, "\(stream.log)")
            _ = try lab.directory.write("go-after-rotation", "")
            #expect(await stream.wait(seconds: 60) == 0, "\(stream.log)\n\(lab.gatewayLogs)")
            let result = try #require(jsonObject(stream.output), "\(stream.log)")
            #expect(result["ok"] as? Bool == true, "every byte echoed exactly: \(result)")
            #expect(result["fingerprint"] as? String == old, "the open connection keeps its certificate: \(result)")
            #expect((result["echoed"] as? Int ?? 0) >= echoedAtRotation + (4 << 20), "\(result)")

            // A key that is no key: the reload is refused, naming the file.
            let mentions = alpha.log.components(separatedBy: key).count
            try "-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n".write(
                toFile: key,
                atomically: true,
                encoding: .utf8
            )
            alpha.signal(SIGHUP)
            let named = await eventually(within: 15) { alpha.log.components(separatedBy: key).count > mentions }
            #expect(named, "the log names \(key): \(alpha.log)")
            #expect(alpha.isRunning)
            let kept = try await Self.servedFingerprint(lab, port: port, ca: ca)
            #expect(kept == new, "the certificate loaded before the broken key is still served: \(alpha.log)")
            let check = try await lab.runTool(
                .alpha,
                ["tls-check", "--port", "\(port)", "--cafile", ca, "--bytes", "65536"],
                seconds: 40
            )
            #expect(check.status == 0, "\(check.output)\n\(lab.gatewayLogs)")
            #expect(await lab.stopGateways() == [], "\(lab.gatewayLogs)")
        }
    }
}

extension GatewayEndToEndTests.TLSEndpoints {
    /// A target that sends a few bytes, then resets its connection (SO_LINGER 0).
    static let resetter = """
        import socket, struct, sys
        server = socket.socket(); server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(('127.0.0.1', int(sys.argv[1]))); server.listen(4); print('listening', flush=True)
        while True:
            connection, _ = server.accept(); connection.recv(10); connection.sendall(b'partial')
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0)); connection.close()
        """

    @Test(
        "a reset behind a tls:// listener reaches the TLS client as an error, never as close_notify",
        .timeLimit(.minutes(2))
    )
    func resetCrossesTLS() async throws {
        let lab = try await GatewayLab()
        let certificates = try await TestCertificates(in: lab.directory.path)
        let target = lab.port(95)
        let port = lab.port(96)
        let server = try lab.spawn(.beta, "python3", ["-u", "-c", Self.resetter, "\(target)"])
        let listening = await eventually(within: 10) { server.output.contains("listening") }
        try #require(listening, "\(server.log)")
        try await lab.startGateways(
            exports: [.init(name: "resetter", port: 9040, target: "tcp://127.0.0.1:\(target)")],
            imports: [
                .init(
                    name: "resetter",
                    listen: "tls://127.0.0.1:\(port)",
                    port: 9040,
                    extra: [certificates.listener("localhost")]
                )
            ]
        )
        // ragged EOFs not suppressed: a clean end would be close_notify, anything else an error.
        let client = """
            import socket, ssl
            context = ssl.create_default_context(cafile='\(certificates.pem("ca"))')
            raw = socket.create_connection(('127.0.0.1', \(port)), timeout=10)
            s = context.wrap_socket(raw, server_hostname='localhost', suppress_ragged_eofs=False)
            s.sendall(b'hello'); got = b''
            try:
                while chunk := s.recv(100): got += chunk
                print('clean end after', got)
            except (ssl.SSLError, OSError) as error:
                print('error after', got, type(error).__name__)
            """
        let result = try await lab.run(.alpha, "python3", ["-c", client], seconds: 30)
        // (The bytes before the reset may go down with it: TCP's reset discards what the
        // target's side had not read yet.)
        #expect(result.output.hasPrefix("error after"), "\(result.output)\n\(lab.gatewayLogs)")
    }

    @Test(
        "a tls:// listener speaks TLS 1.3 and TLS 1.2 with ECDHE and an AEAD only: older versions and ciphers are refused",
        .timeLimit(.minutes(2))
    )
    func modernOnly() async throws {
        let lab = try await GatewayLab()
        let certificates = try await TestCertificates(in: lab.directory.path)
        let port = lab.port(97)
        try await lab.startGateways(
            imports: [
                .init(
                    name: "echo-tls",
                    listen: "tls://127.0.0.1:\(port)",
                    port: 7,
                    extra: [certificates.listener("localhost")]
                )
            ]
        )
        /// Whether s_client completes a handshake with `options` (and ends at once).
        func handshake(_ options: [String]) async throws -> Bool {
            let script = """
                timeout 10 openssl s_client -brief -connect 127.0.0.1:\(port) -CAfile \(certificates.pem("ca")) \\
                    \(options.joined(separator: " ")) < /dev/null 2>&1
                """
            let result = try await lab.run(.alpha, "/bin/bash", ["-c", script], seconds: 30)
            return result.output.contains("CONNECTION ESTABLISHED")
        }
        #expect(try await handshake(["-tls1_3"]), "\(lab.gatewayLogs)")
        #expect(
            try await handshake(["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256"])
        )
        #expect(
            try await handshake(["-tls1_2", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"])
        )
        // No forward secrecy, CBC, TLS 1.1.
        #expect(try await !handshake(["-tls1_2", "-cipher", "AES128-GCM-SHA256"]))
        #expect(try await !handshake(["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA"]))
        #expect(try await !handshake(["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"]))
    }

    @Test(
        "clients still in their handshake count against max_connections: a silent flood cannot pile up",
        .timeLimit(.minutes(2))
    )
    func handshakesAreLimited() async throws {
        let lab = try await GatewayLab()
        let certificates = try await TestCertificates(in: lab.directory.path)
        let port = lab.port(98)
        let metricsPort = lab.port(99)
        try await lab.startGateways(
            imports: [
                .init(
                    name: "echo-tls",
                    listen: "tls://127.0.0.1:\(port)",
                    port: 7,
                    extra: [certificates.listener("localhost", handshakeTimeout: "3s"), "max_connections: 2"]
                )
            ],
            extra: [.alpha: "metrics:\n  listen: tcp://127.0.0.1:\(metricsPort)\n"]
        )
        // Two clients that never say hello hold both places; a third is closed at once.
        let script = """
            import socket, time
            silent = [socket.create_connection(('127.0.0.1', \(port))) for _ in range(2)]
            time.sleep(0.5)
            third = socket.create_connection(('127.0.0.1', \(port))); third.settimeout(2)
            start = time.time()
            try:
                print('third:', third.recv(10), round(time.time() - start, 1))
            except OSError as error:
                print('third:', type(error).__name__, round(time.time() - start, 1))
            """
        let flood = try await lab.run(.alpha, "python3", ["-c", script], seconds: 30)
        #expect(flood.output.contains("third: b'' 0.0"), "closed at once: \(flood.output)\n\(lab.gatewayLogs)")
        let counts = outcomeCounts(try await lab.metrics(.alpha, port: metricsPort), side: "import")
        #expect(counts["limit_reached"] == 1, "\(counts)")
        // Once they are gone (closed, or timed out), a client gets in.
        let good = """
            timeout 10 openssl s_client -brief -connect 127.0.0.1:\(port) -CAfile \(certificates.pem("ca")) \\
                < /dev/null 2>&1
            """
        let reachable = await eventually(within: 10) {
            (try? await lab.run(.alpha, "/bin/bash", ["-c", good]))?.output.contains("CONNECTION ESTABLISHED") == true
        }
        #expect(reachable, "\(lab.gatewayLogs)")
    }

    /// TLS terminated by HAProxy (linked to the system's OpenSSL) in front of a tcp://
    /// listener, as docs/CROSS-HOST.md describes for where system OpenSSL is required:
    /// HAProxy verifies the client certificate and passes its name in PP2_TYPE_SSL
    /// (`send-proxy-v2-ssl-cn`); the gateway trusts HAProxy by address and the caller is
    /// that certificate's name.
    @Test(
        "behind HAProxy's TLS with send-proxy-v2-ssl-cn, the caller is the verified client certificate's name",
        .timeLimit(.minutes(2))
    )
    func haproxyTerminatesTLS() async throws {
        let lab = try await GatewayLab()
        let certificates = try await TestCertificates(in: lab.directory.path)
        let (haproxyPort, listenerPort, target) = (lab.port(70), lab.port(71), lab.port(72))
        let combined = try lab.directory.write(
            "localhost-combined.pem",
            try String(contentsOfFile: certificates.pem("localhost"), encoding: .utf8)
                + String(contentsOfFile: certificates.key("localhost"), encoding: .utf8)
        )
        let config = try lab.directory.write(
            "haproxy.cfg",
            """
            defaults
                mode tcp
                timeout connect 5s
                timeout client 10s
                timeout server 10s
            frontend tls-in
                bind 127.0.0.1:\(haproxyPort) ssl crt \(combined) ca-file \(certificates.pem("ca")) verify required
                default_backend gateway
            backend gateway
                server gateway 127.0.0.1:\(listenerPort) send-proxy-v2-ssl-cn

            """
        )
        let haproxy = try lab.spawn(.alpha, "haproxy", ["-db", "-f", config])
        try await lab.startToolServer(.beta, ["proxy-echo-server", "--port", "\(target)"])
        try await lab.startGateways(
            exports: [
                .init(
                    name: "who",
                    port: 9050,
                    target: "tcp://127.0.0.1:\(target)",
                    allow: ["\"*@netvm-a.example\""],
                    extra: ["relays: [alpha]", "proxy_protocol: v2"]
                )
            ],
            imports: [
                .init(
                    name: "who",
                    listen: "tcp://127.0.0.1:\(listenerPort)",
                    port: 9050,
                    extra: ["proxy_protocol: accept", "trusted_proxies: [127.0.0.1]"]
                )
            ]
        )
        /// What the target reports of the header, through HAProxy with client certificate `client`.
        func through(_ client: String) async throws -> String {
            let script = """
                printf hello | timeout 10 openssl s_client -quiet -connect 127.0.0.1:\(haproxyPort) \\
                    -CAfile \(certificates.pem("ca")) -cert \(certificates.pem(client)) \\
                    -key \(certificates.key(client)) 2>/dev/null
                """
            return try await lab.run(.alpha, "/bin/bash", ["-c", script], seconds: 30).output
        }
        let reachable = await eventually(within: 15) { (try? await through("netvm-a"))?.contains("hello") == true }
        try #require(reachable, "\(haproxy.log)\n\(lab.gatewayLogs)")
        let admitted = try await through("netvm-a")
        #expect(admitted.contains("\"asserted_by\": \"netvm-a.example\""), "\(admitted)")
        #expect(admitted.contains("\"cn\": \"netvm-a.example\""), "\(admitted)")
        // Another certificate of the same CA is not in the allow-list.
        let refused = try await through("other-a")
        #expect(!refused.contains("hello"), "\(refused)")
        let denied = await eventually(within: 10) {
            lab.gatewayLogs.contains("caller=*@other-a.example") && lab.gatewayLogs.contains("denied")
        }
        #expect(denied, "\(lab.gatewayLogs)")
    }
}
