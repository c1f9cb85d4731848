// SPDX-License-Identifier: Apache-2.0
import Foundation
import HMXProcessTestSupport
import Testing

extension GatewayEndToEndTests {
    /// `source_address: per_domain`: an unmodified server sees which domain connected in
    /// the client address, and its access control can use it.
    @Suite("source address per domain")
    struct SourceAddress {
        /// A server that answers each connection with the client's address, then closes.
        static let whoServer = """
            import socket, sys
            server = socket.socket(); server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind(('127.0.0.1', int(sys.argv[1]))); server.listen(16); print('listening', flush=True)
            while True:
                connection, address = server.accept()
                connection.sendall(f'from {address[0]}\\n'.encode()); connection.close()
            """

        static let whoClient = """
            import socket, sys
            s = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=10); answer = b''
            while chunk := s.recv(100): answer += chunk
            print(answer.decode().strip())
            """

        /// The lab with a third domain, gamma (3), whose gateway runs beside alpha's; beta
        /// exports `port` (HMX service 80 by default) to alpha and gamma with per-domain
        /// source addresses; alpha imports it on `alphaPort`, gamma on `gammaPort`.
        static func start(
            _ lab: GatewayLab,
            target: Int,
            servicePort: Int = 80,
            alphaPort: Int,
            gammaPort: Int
        ) async throws {
            try await lab.startGateways(
                exports: [
                    .init(
                        name: "who",
                        port: servicePort,
                        target: "tcp://127.0.0.1:\(target)",
                        allow: ["alpha", "gamma"],
                        extra: ["source_address: per_domain"]
                    )
                ],
                imports: [.init(name: "who", listen: "tcp://127.0.0.1:\(alphaPort)", port: servicePort)],
                betaPeers: ["alpha": 1, "gamma": 3]
            )
            let gammaConfig = try lab.directory.write(
                "gateway-gamma.yaml",
                """
                link:
                  emulator: \(lab.directory.path)/gamma.sock
                peers:
                  beta: 2
                imports:
                  - {name: who, listen: "tcp://127.0.0.1:\(gammaPort)", peer: beta, port: \(servicePort)}

                """
            )
            // In alpha's network namespace (if any), attached as domain gamma.
            let gamma = try lab.spawn(.alpha, "hmx-gateway", ["run", "--config", gammaConfig])
            let listening = await eventually(within: 20) { gamma.log.contains("import listening") }
            try #require(listening, "\(gamma.log)")
            // beta started before domain gamma existed: its ring for gamma comes with a
            // retry; until then gamma's OPENs cannot be answered.
            let reachable = await eventually(within: 20) {
                lab.gatewayLogs.contains("peer=gamma(3) [HMXGateway] ring registered for peer")
            }
            try #require(reachable, "\(lab.gatewayLogs)")
        }

        @Test("the target sees 127.77.0.1 for domain 1 and 127.77.0.3 for domain 3", .timeLimit(.minutes(2)))
        func addresses() async throws {
            let lab = try await GatewayLab(
                policy: GatewayLab.openPolicy
                    + "\n  - {action: allow, from: gamma, to: beta}\n  - {action: allow, from: beta, to: gamma}",
                extraDomains: [(3, "gamma")]
            )
            let target = lab.port(40)
            let server = try lab.spawn(.beta, "python3", ["-u", "-c", Self.whoServer, "\(target)"])
            let up = await eventually(within: 10) { server.output.contains("listening") }
            try #require(up, "\(server.log)")
            try await Self.start(lab, target: target, alphaPort: lab.port(41), gammaPort: lab.port(42))

            let fromAlpha = try await lab.run(.alpha, "python3", ["-c", Self.whoClient, "\(lab.port(41))"])
            #expect(fromAlpha.output == "from 127.77.0.1\n", "\(fromAlpha.output)\n\(lab.gatewayLogs)")
            let fromGamma = try await lab.run(.alpha, "python3", ["-c", Self.whoClient, "\(lab.port(42))"])
            #expect(fromGamma.output == "from 127.77.0.3\n", "\(fromGamma.output)\n\(lab.gatewayLogs)")
        }

        /// PostgreSQL's binaries (Debian: postgresql).
        static var postgresBin: String? {
            let versions = (try? FileManager.default.contentsOfDirectory(atPath: "/usr/lib/postgresql")) ?? []
            return versions.sorted { $0.compare($1, options: .numeric) == .orderedAscending }.last.map {
                "/usr/lib/postgresql/\($0)/bin"
            }
        }

        @Test(
            "PostgreSQL's pg_hba.conf admits domain 1's address and rejects domain 3's",
            .enabled(if: getuid() == 0 && Self.postgresBin != nil, "needs root (runuser postgres) and PostgreSQL"),
            .timeLimit(.minutes(3))
        )
        func postgres() async throws {
            let lab = try await GatewayLab(
                policy: GatewayLab.openPolicy
                    + "\n  - {action: allow, from: gamma, to: beta}\n  - {action: allow, from: beta, to: gamma}",
                extraDomains: [(3, "gamma")]
            )
            let bin = try #require(Self.postgresBin)
            let data = "\(lab.directory.path)/pg"
            let port = lab.port(50)
            let prepare = try await lab.run(
                .beta,
                "/bin/sh",
                [
                    "-c",
                    """
                    set -e
                    mkdir -p \(data) && chown postgres \(data) \(lab.directory.path) && chmod 755 \(lab.directory.path)
                    runuser -u postgres -- \(bin)/initdb -D \(data)/db -A reject -U app >/dev/null
                    printf 'host all app 127.77.0.1/32 trust\\nhost all all all reject\\n' > \(data)/db/pg_hba.conf
                    """,
                ]
            )
            try #require(prepare.status == 0, "\(prepare.output)")
            let postgres = try lab.spawn(
                .beta,
                "runuser",
                [
                    "-u", "postgres", "--", "\(bin)/postgres", "-D", "\(data)/db", "-k", data, "-p", "\(port)",
                    "-c", "listen_addresses=127.0.0.1",
                ]
            )
            let ready = await eventually(within: 30) { postgres.log.contains("ready to accept connections") }
            try #require(ready, "\(postgres.log)")
            try await Self.start(lab, target: port, servicePort: 5432, alphaPort: lab.port(51), gammaPort: lab.port(52))

            let query = ["-h", "127.0.0.1", "-U", "app", "-d", "postgres", "-tAc", "select inet_client_addr()"]
            let fromAlpha = try await lab.run(.alpha, "psql", ["-p", "\(lab.port(51))"] + query)
            #expect(fromAlpha.status == 0 && fromAlpha.output == "127.77.0.1\n", "\(fromAlpha.output)")
            let fromGamma = try await lab.run(.alpha, "psql", ["-p", "\(lab.port(52))"] + query)
            #expect(fromGamma.status != 0, "\(fromGamma.output)")
            #expect(
                fromGamma.output.contains("pg_hba.conf rejects connection for host \"127.77.0.3\""),
                "\(fromGamma.output)"
            )
        }
    }
}
