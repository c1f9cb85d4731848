// SPDX-License-Identifier: Apache-2.0
import Foundation
import HMXProcessTestSupport
import Testing

extension GatewayEndToEndTests {
    /// Configs/examples: every file passes `check-config` as shipped, and every pair runs
    /// with the program it is written for. The test reads the shipped text and replaces
    /// only what belongs to the test machine (the `/run/hmx/` paths, the service's socket
    /// or port, the import's port); a replacement that finds nothing fails the test, so
    /// the files and the test cannot drift apart.
    @Suite("example configurations (Configs/examples)")
    struct ExampleConfigs {
        static let folder = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../../Configs/examples").standardized.path
        static let examples = ["postgres", "ssh", "http", "redis"]

        /// The domains of emulator.yaml, each in one of the lab's namespaces (as root).
        static let app = GatewayLab.Domain.alpha
        static let server = GatewayLab.Domain.beta

        /// The shipped file `name` with each replacement applied. A replacement that
        /// finds nothing, or a `/run/` path left in a setting, fails the test.
        static func substituted(_ name: String, _ replacements: [(String, String)]) throws -> String {
            var text = try String(contentsOfFile: "\(Self.folder)/\(name)", encoding: .utf8)
            for (old, new) in replacements {
                try #require(
                    text.contains(old),
                    "Configs/examples/\(name) no longer contains \(old): update the example's test with it"
                )
                text = text.replacingOccurrences(of: old, with: new)
            }
            let settings = text.split(separator: "\n").map { line in
                line.hasPrefix("#") ? "" : String(line.split(separator: " #", maxSplits: 1).first ?? "")
            }
            let left = settings.filter { $0.contains("/run/") }
            try #require(left.isEmpty, "Configs/examples/\(name): machine paths the test did not replace: \(left)")
            return text
        }

        /// A lab whose emulator runs Configs/examples/emulator.yaml, its sockets moved into
        /// the lab's directory.
        static func lab() async throws -> GatewayLab {
            try await GatewayLab(emulatorConfig: { directory in
                (
                    try Self.substituted("emulator.yaml", [("/run/hmx/", "\(directory)/")]),
                    ["\(directory)/app.sock", "\(directory)/server.sock"]
                )
            })
        }

        struct Deployment {
            var exportConfig: String
            var importConfig: String
        }

        /// Starts the gateways of `example` in server (export) and app (import) from the
        /// shipped files, with `/run/hmx/` moved into the lab's directory and the given
        /// replacements, and waits until `hmx-gateway status` (on the control socket the
        /// file names) says each one is ready.
        static func startGateways(
            _ lab: GatewayLab,
            _ example: String,
            export: [(String, String)],
            import imports: [(String, String)]
        ) async throws -> Deployment {
            let runtime = ("/run/hmx/", "\(lab.directory.path)/")
            let deployment = Deployment(
                exportConfig: try lab.directory.write(
                    "\(example)-export.yaml",
                    try Self.substituted("\(example)-export.yaml", [runtime] + export)
                ),
                importConfig: try lab.directory.write(
                    "\(example)-import.yaml",
                    try Self.substituted("\(example)-import.yaml", [runtime] + imports)
                )
            )
            try lab.startGateway(Self.server, config: deployment.exportConfig)
            try lab.startGateway(Self.app, config: deployment.importConfig)
            for (domain, config) in [(Self.server, deployment.exportConfig), (Self.app, deployment.importConfig)] {
                var last = ""
                let ready = await eventually(within: 30) {
                    let status = try? await lab.run(domain, "hmx-gateway", ["status", "--config", config], seconds: 10)
                    last = "exit status \(status?.status.map(String.init) ?? "none (killed)"): \(status?.output ?? "")"
                    return status?.status == 0
                }
                try #require(ready, "the gateway of \(config) did not become ready:\n\(last)\n\(lab.gatewayLogs)")
            }
            return deployment
        }

        /// Both gateways' status (their control sockets) counts `connections` opened for
        /// `mapping` and nothing that failed; then both stop cleanly.
        static func expectServed(
            _ lab: GatewayLab,
            _ deployment: Deployment,
            mapping: String,
            connections: Int
        ) async throws {
            for (domain, config, kind) in [
                (Self.app, deployment.importConfig, "import"), (Self.server, deployment.exportConfig, "export"),
            ] {
                let status = try await lab.run(domain, "hmx-gateway", ["status", "--config", config, "--json"])
                #expect(status.status == 0, "\(status.output)")
                let object = try GatewayEndToEndTests.Status.object(status.output)
                let counters = try GatewayEndToEndTests.Status.mapping(object, kind, mapping)
                #expect(counters["opened"] as? Int == connections, "\(kind) \(mapping): \(counters)")
                #expect(counters["outcomes"] as? [String: Int] == [:], "\(kind) \(mapping): \(counters)")
                #expect(
                    counters["peers"] as? [String] == [kind == "import" ? "server(2)" : "app(1)"],
                    "\(kind) \(mapping): \(counters)"
                )
            }
            #expect(await lab.stopGateways() == [], "\(lab.gatewayLogs)")
        }

        @Test("the folder holds emulator.yaml, README.md and an export and an import file per example")
        func listing() throws {
            let files = try FileManager.default.contentsOfDirectory(atPath: Self.folder).sorted()
            let expected =
                ["README.md", "emulator.yaml"] + Self.examples.flatMap { ["\($0)-export.yaml", "\($0)-import.yaml"] }
            #expect(files == expected.sorted())
        }

        @Test(
            "check-config accepts the shipped files unchanged, and explain says their mapping works",
            arguments: examples
        )
        func checkConfig(_ example: String) async throws {
            let emulator = "\(Self.folder)/emulator.yaml"
            let checked = try await run(
                executablePath("hmx-emulator") ?? "hmx-emulator",
                ["check-config", emulator]
            )
            #expect(checked.status == 0, "\(checked.output)")
            let files = ["export", "import"].map { "\(Self.folder)/\(example)-\($0).yaml" }
            for file in files {
                let result = try await run(executablePath("hmx-gateway") ?? "hmx-gateway", ["check-config", file])
                #expect(result.status == 0, "\(file): \(result.output)")
            }
            let explain = try await run(
                executablePath("hmx-gateway") ?? "hmx-gateway",
                ["explain", "--emulator", emulator] + files
            )
            #expect(explain.status == 0, "\(explain.output)")
            #expect(explain.output.contains("works  app(1) import "), "\(explain.output)")
            #expect(explain.output.contains("1 work, 0 fail; 0 error(s), 0 warning(s)"), "\(explain.output)")
        }

        /// The newest PostgreSQL's programs (Debian's postgresql package).
        static var postgresBin: String? {
            let root = "/usr/lib/postgresql"
            let versions = (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []
            return versions.compactMap { Int($0) }.sorted().reversed().map { "\(root)/\($0)/bin" }.first {
                FileManager.default.isExecutableFile(atPath: "\($0)/initdb")
            }
        }

        /// Fast shutdown of the cluster in `data`, waiting up to 20 s.
        static func stopPostgres(_ data: String) {
            guard let text = try? String(contentsOfFile: "\(data)/postmaster.pid", encoding: .utf8),
                let pid = Int32(text.split(separator: "\n").first ?? "")
            else { return }
            kill(pid, SIGINT)
            for _ in 0..<200 where kill(pid, 0) == 0 { usleep(100_000) }
        }

        @Test(
            "PostgreSQL: psql in app uses a private cluster's Unix socket in server; peer authentication sees the gateway's user",
            .timeLimit(.minutes(3))
        )
        func postgres() async throws {
            let bin = try #require(Self.postgresBin, "needs PostgreSQL (Debian's postgresql)")
            let lab = try await Self.lab()
            let pg = "\(lab.directory.path)/pg"
            try FileManager.default.createDirectory(atPath: pg, withIntermediateDirectories: false)
            // initdb and postgres refuse to run as root: as root, they run as postgres.
            let root = getuid() == 0
            if root {
                let user = try #require(getpwnam("postgres"), "Debian's postgresql creates the user postgres")
                try #require(chown(pg, user.pointee.pw_uid, user.pointee.pw_gid) == 0)
            }
            func asPostgres(_ program: String, _ arguments: [String]) -> (String, [String]) {
                root ? ("runuser", ["-u", "postgres", "--", program] + arguments) : (program, arguments)
            }
            // The superuser is the OS user that ran initdb (peer authentication lets it in).
            let superuser = root ? "postgres" : String(cString: getpwuid(getuid()).pointee.pw_name)
            let gatewayUser = String(cString: getpwuid(getuid()).pointee.pw_name)

            let (initdb, initdbArguments) = asPostgres(
                "\(bin)/initdb",
                ["-D", "\(pg)/data", "--auth-local=peer", "--auth-host=reject", "--no-locale", "-E", "UTF8", "-N"]
            )
            let created = try await lab.run(Self.server, initdb, initdbArguments, seconds: 120)
            try #require(created.status == 0, "initdb: \(created.output)")
            // What the example's comment recommends: a password for the role used from app,
            // peer for everyone else.
            _ = try lab.directory.write(
                "pg/data/pg_hba.conf",
                "local all app scram-sha-256\nlocal all all peer\n"
            )
            // Only the Unix socket: no TCP listener at all.
            let (postgres, postgresArguments) = asPostgres(
                "\(bin)/postgres",
                [
                    "-D", "\(pg)/data", "-k", pg, "-c", "listen_addresses=", "-c", "log_connections=on",
                    "-c", "fsync=off",
                ]
            )
            let server = try lab.spawn(Self.server, postgres, postgresArguments)
            defer { Self.stopPostgres("\(pg)/data") }
            let up = await eventually(within: 30) {
                (try? await lab.run(Self.server, "\(bin)/pg_isready", ["-h", pg, "-p", "5432"], seconds: 5))?.status
                    == 0
            }
            try #require(up, "postgres did not start: \(server.log)")
            let (psqlSetup, setupArguments) = asPostgres(
                "\(bin)/psql",
                [
                    "-h", pg, "-U", superuser, "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-q",
                    "-c", "CREATE ROLE app LOGIN PASSWORD 'app-secret'", "-c", "CREATE DATABASE app OWNER app",
                    "-c", "CREATE ROLE alice LOGIN",
                ]
            )
            let setup = try await lab.run(Self.server, psqlSetup, setupArguments)
            try #require(setup.status == 0, "\(setup.output)\n\(server.log)")

            let importPort = lab.port(30)
            let deployment = try await Self.startGateways(
                lab,
                "postgres",
                export: [("unix:/run/postgresql/.s.PGSQL.5432", "unix:\(pg)/.s.PGSQL.5432")],
                import: [("tcp://127.0.0.1:5432", "tcp://127.0.0.1:\(importPort)")]
            )

            // psql in app, through the import, as role app with its password.
            let psql = try lab.spawn(
                Self.app,
                "\(bin)/psql",
                [
                    "host=127.0.0.1 port=\(importPort) dbname=app user=app connect_timeout=10",
                    "-v", "ON_ERROR_STOP=1", "-q", "-A", "-t",
                    "-c", "CREATE TABLE greetings (text text)",
                    "-c", "INSERT INTO greetings VALUES ('hello from app')",
                    "-c", "SELECT current_user, inet_client_addr() IS NULL, text FROM greetings",
                ],
                environment: ["PGPASSWORD": "app-secret"]
            )
            #expect(await psql.wait(seconds: 60) == 0, "\(psql.log)\n\(server.log)\n\(lab.gatewayLogs)")
            // A Unix-socket connection: no client address.
            #expect(psql.output == "app|t|hello from app\n", "\(psql.log)")
            #expect(server.log.contains("connection received: host=[local]"), "\(server.log)")
            let (psqlDirect, storedArguments) = asPostgres(
                "\(bin)/psql",
                ["-h", pg, "-U", superuser, "-d", "app", "-A", "-t", "-c", "SELECT text FROM greetings"]
            )
            let stored = try await lab.run(Self.server, psqlDirect, storedArguments)
            #expect(stored.output == "hello from app\n", "\(stored.output)")

            // peer compares the role with the gateway's OS user, not with anyone in app.
            let peer = try await lab.run(
                Self.app,
                "\(bin)/psql",
                ["host=127.0.0.1 port=\(importPort) dbname=app user=alice connect_timeout=10", "-c", "SELECT 1"]
            )
            #expect(peer.status != 0, "\(peer.output)")
            #expect(peer.output.contains("Peer authentication failed for user \"alice\""), "\(peer.output)")
            let logged = await eventually(within: 10) {
                server.log.contains(
                    "provided user name (alice) and authenticated user name (\(gatewayUser)) do not match"
                )
            }
            #expect(logged, "\(server.log)")

            try await Self.expectServed(lab, deployment, mapping: "postgres", connections: 2)
        }

        @Test(
            "SSH: ssh in app runs commands through a private sshd in server",
            .enabled(if: getuid() == 0, "sshd runs as root"),
            .timeLimit(.minutes(3))
        )
        func ssh() async throws {
            let lab = try await Self.lab()
            let directory = lab.directory.path
            // sshd's privilege separation directory (Debian's service creates it at start).
            try FileManager.default.createDirectory(atPath: "/run/sshd", withIntermediateDirectories: true)
            for key in ["host_key", "client_key"] {
                let made = try await run("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", "\(directory)/\(key)"])
                try #require(made.status == 0, "ssh-keygen: \(made.output)")
            }
            try FileManager.default.copyItem(
                atPath: "\(directory)/client_key.pub",
                toPath: "\(directory)/authorized_keys"
            )
            // A private sshd on a high port of server's loopback; the machine's own sshd
            // configuration is not read.
            let sshdPort = lab.port(40)
            let config = try lab.directory.write(
                "sshd_config",
                """
                ListenAddress 127.0.0.1
                HostKey \(directory)/host_key
                AuthorizedKeysFile \(directory)/authorized_keys
                PidFile \(directory)/sshd.pid
                PermitRootLogin prohibit-password
                PasswordAuthentication no
                KbdInteractiveAuthentication no
                UsePAM no
                StrictModes no

                """
            )
            // sshd closes the descriptors it inherits, among them the socket by which
            // Foundation's Process learns that a child has ended: Foundation would then wait
            // for sshd in a blocking waitpid and notice no other child's end. The shell
            // keeps its copy open while sshd runs (`exit` keeps bash from exec'ing sshd).
            let sshdPath = try #require(executablePath("sshd"), "needs sshd (Debian's openssh-server)")
            let sshd = try lab.shell(Self.server, "\(sshdPath) -D -e -f \(config) -p \(sshdPort)\nexit $?")
            let listening = await eventually(within: 15) { sshd.log.contains("Server listening on 127.0.0.1") }
            try #require(listening, "sshd did not start: \(sshd.log)")

            let importPort = lab.port(41)
            let deployment = try await Self.startGateways(
                lab,
                "ssh",
                export: [("tcp://127.0.0.1:22", "tcp://127.0.0.1:\(sshdPort)")],
                import: [("tcp://127.0.0.1:2222", "tcp://127.0.0.1:\(importPort)")]
            )
            let client = [
                "-F", "/dev/null", "-i", "\(directory)/client_key", "-o", "IdentitiesOnly=yes",
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
                "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR", "-p", "\(importPort)", "root@127.0.0.1",
            ]
            // sshd sees the session come from 127.0.0.1 (the gateway), on its own port.
            let command = try await lab.run(
                Self.app,
                "ssh",
                client + ["echo hello over HMX; echo $SSH_CONNECTION"],
                seconds: 60
            )
            #expect(command.status == 0, "\(command.output)\n\(sshd.log)\n\(lab.gatewayLogs)")
            let lines = command.output.split(separator: "\n").map(String.init)
            #expect(lines.first == "hello over HMX", "\(command.output)")
            let connection = lines.dropFirst().first?.split(separator: " ").map(String.init) ?? []
            #expect(
                connection.count == 4 && connection[0] == "127.0.0.1" && connection[2] == "127.0.0.1"
                    && connection[3] == "\(sshdPort)",
                "SSH_CONNECTION: \(command.output)"
            )

            // 2 MiB through the session, checked on the other side.
            let sent = "\(directory)/sent"
            let digest = try await run(
                "/bin/bash",
                ["-c", "head -c 2097152 /dev/urandom > \(sent) && sha256sum < \(sent)"]
            )
            try #require(digest.status == 0, "\(digest.output)")
            let copy = try lab.spawn(Self.app, "ssh", client + ["sha256sum"], standardInput: sent)
            #expect(await copy.wait(seconds: 60) == 0, "\(copy.log)\n\(lab.gatewayLogs)")
            #expect(copy.output == digest.output, "\(copy.log)")

            try await Self.expectServed(lab, deployment, mapping: "ssh", connections: 2)
        }

        @Test(
            "HTTP with PROXY v2: curl in app reaches a web service behind HAProxy, which sees domain app as 100.64.0.1",
            .timeLimit(.minutes(3))
        )
        func http() async throws {
            let lab = try await Self.lab()
            let haproxyPort = lab.port(50)
            let webPort = lab.port(52)
            // The example's snippet: accept-proxy, X-Forwarded-For for the web service.
            // The web service is a second frontend of the same HAProxy answering with the
            // headers it got; the first also passes on the header's destination.
            let config = try lab.directory.write(
                "haproxy.cfg",
                """
                global
                    log stderr format raw local0
                defaults
                    mode http
                    log global
                    option httplog
                    timeout connect 5s
                    timeout client 10s
                    timeout server 10s
                frontend from-domains
                    bind 127.0.0.1:\(haproxyPort) accept-proxy
                    option forwardfor
                    http-request set-header X-Proxy-Destination "%[dst]:%[dst_port]"
                    default_backend web
                backend web
                    server web1 127.0.0.1:\(webPort)
                frontend web-service
                    bind 127.0.0.1:\(webPort)
                    http-request return status 200 content-type text/plain lf-string "X-Forwarded-For %[req.hdr(x-forwarded-for)], destination %[req.hdr(x-proxy-destination)], path %[path]\\n"

                """
            )
            let haproxy = try lab.spawn(Self.server, "haproxy", ["-db", "-f", config])
            let listening = await eventually(within: 15) {
                (try? await lab.run(
                    Self.server,
                    "socat",
                    ["-u", "OPEN:/dev/null", "TCP:127.0.0.1:\(haproxyPort)"],
                    seconds: 5
                ).status) == 0
            }
            try #require(listening, "haproxy did not start: \(haproxy.log)")

            let importPort = lab.port(51)
            let deployment = try await Self.startGateways(
                lab,
                "http",
                export: [("tcp://127.0.0.1:8081", "tcp://127.0.0.1:\(haproxyPort)")],
                import: [("tcp://127.0.0.1:8080", "tcp://127.0.0.1:\(importPort)")]
            )
            let curl = try await lab.run(
                Self.app,
                "curl",
                ["-sS", "--max-time", "20", "http://127.0.0.1:\(importPort)/hello"],
                seconds: 30
            )
            #expect(curl.status == 0, "\(curl.output)\n\(haproxy.log)\n\(lab.gatewayLogs)")
            #expect(
                curl.output == "X-Forwarded-For 100.64.0.1, destination 127.0.0.1:\(haproxyPort), path /hello\n",
                "\(curl.output)\n\(haproxy.log)"
            )
            // HAProxy's log names the client by the header's source address.
            let logged = await eventually(within: 5) { haproxy.log.contains("100.64.0.1:") }
            #expect(logged, "\(haproxy.log)")
            try await Self.expectServed(lab, deployment, mapping: "web", connections: 1)
        }

        @Test("Redis: redis-cli in app reads and writes server's redis-server", .timeLimit(.minutes(3)))
        func redis() async throws {
            let lab = try await Self.lab()
            let redisPort = lab.port(60)
            let redis = try lab.spawn(
                Self.server,
                "redis-server",
                ["--port", "\(redisPort)", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            )
            let up = await eventually(within: 15) {
                (try? await lab.run(Self.server, "redis-cli", ["-p", "\(redisPort)", "PING"], seconds: 5))?.output
                    == "PONG\n"
            }
            try #require(up, "redis-server did not start: \(redis.log)")

            let importPort = lab.port(61)
            let deployment = try await Self.startGateways(
                lab,
                "redis",
                export: [("tcp://127.0.0.1:6379", "tcp://127.0.0.1:\(redisPort)")],
                import: [("tcp://127.0.0.1:6379", "tcp://127.0.0.1:\(importPort)")]
            )
            let cli = ["-h", "127.0.0.1", "-p", "\(importPort)"]
            let set = try await lab.run(Self.app, "redis-cli", cli + ["SET", "greeting", "hello from app"])
            #expect(set.output == "OK\n", "\(set.output)\n\(lab.gatewayLogs)")
            let get = try await lab.run(Self.app, "redis-cli", cli + ["GET", "greeting"])
            #expect(get.output == "hello from app\n", "\(get.output)")
            // redis-server sees the gateway's address, as the example says.
            let info = try await lab.run(Self.app, "redis-cli", cli + ["CLIENT", "INFO"])
            #expect(info.output.contains("addr=127.0.0.1:"), "\(info.output)")
            // The value is in server's redis.
            let direct = try await lab.run(Self.server, "redis-cli", ["-p", "\(redisPort)", "GET", "greeting"])
            #expect(direct.output == "hello from app\n", "\(direct.output)")

            try await Self.expectServed(lab, deployment, mapping: "redis", connections: 3)
        }
    }
}
