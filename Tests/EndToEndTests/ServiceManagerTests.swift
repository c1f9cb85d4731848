// SPDX-License-Identifier: Apache-2.0
import Foundation
import HMXProcessTestSupport
import Testing

extension GatewayEndToEndTests {
    /// The gateway under a service manager (systemd `Type=notify`): what it sends to
    /// `NOTIFY_SOCKET`, read by a listener as systemd would.
    @Suite("service manager: sd_notify readiness, reload, stop and watchdog")
    struct ServiceManager {
        /// A Unix datagram listener printing each message as `SECONDS STATE|STATE...`.
        static let listener = """
            import socket, sys, time
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            s.bind(sys.argv[1])
            print("listening", flush=True)
            while True:
                data = s.recv(4096).decode()
                print("%.3f %s" % (time.monotonic(), data.replace("\\n", "|")), flush=True)
            """

        /// The messages received so far: (monotonic seconds, the message's lines).
        static func messages(_ listener: ChildProcess) -> [(Double, [String])] {
            listener.output.split(separator: "\n").compactMap { line in
                let parts = line.split(separator: " ", maxSplits: 1)
                guard parts.count == 2, let time = Double(parts[0]) else { return nil }
                return (time, parts[1].split(separator: "|").map(String.init))
            }
        }

        @Test("READY after start, RELOADING and READY around SIGHUP, WATCHDOG at half the period, STOPPING on SIGTERM")
        func notify() async throws {
            let lab = try await GatewayLab()
            let socket = "\(lab.directory.path)/notify.sock"
            let listener = try lab.spawn(.alpha, "python3", ["-u", "-c", Self.listener, socket])
            let listening = await eventually(within: 10) { listener.output.contains("listening") }
            try #require(listening, "\(listener.log)")
            try await lab.startBetaFirst()
            let alphaConfig = try lab.gatewayConfig(.alpha, exports: [], imports: [lab.echoImport])
            let gateway = try lab.startGateway(
                .alpha,
                config: alphaConfig,
                environment: ["NOTIFY_SOCKET": socket, "WATCHDOG_USEC": "400000"]
            )
            let ready = await eventually(within: 30) { Self.messages(listener).contains { $0.1.contains("READY=1") } }
            try #require(ready, "\(listener.log)\n\(lab.gatewayLogs)")
            let first = try #require(Self.messages(listener).first { $0.1.contains("READY=1") })
            #expect(first.1.contains { $0.hasPrefix("STATUS=ready; rings for 1 of 1 peers") }, "\(first)")
            // Ready means serving: the import answers at once.
            let probe = try await lab.runTool(
                .alpha,
                ["probe", "--port", "\(lab.echoPort)", "--timeout", "5"],
                seconds: 10
            )
            #expect(probe.status == 0, "\(probe.output)")

            // Watchdog pings every 0.2 s (half of 0.4 s), from the event loop.
            try await Task.sleep(for: .seconds(1.5))
            let pings = Self.messages(listener).filter { $0.1 == ["WATCHDOG=1"] }.map(\.0)
            #expect(pings.count >= 5, "\(listener.output)")
            let gaps = zip(pings.dropFirst(), pings).map { $0 - $1 }
            #expect(gaps.allSatisfy { $0 > 0.1 && $0 < 0.35 }, "gaps \(gaps)")

            // SIGHUP: RELOADING=1 with the monotonic time, then READY=1 again.
            let before = Self.messages(listener).count
            gateway.signal(SIGHUP)
            let reloaded = await eventually(within: 10) {
                Self.messages(listener).dropFirst(before).contains { $0.1.contains("READY=1") }
            }
            #expect(reloaded, "\(listener.output)")
            let reloading = Self.messages(listener).dropFirst(before).first { $0.1.contains("RELOADING=1") }
            #expect(reloading?.1.contains { $0.hasPrefix("MONOTONIC_USEC=") } == true, "\(listener.output)")

            // SIGTERM: STOPPING=1, and the gateway exits cleanly.
            gateway.signal(SIGTERM)
            let stopped = await gateway.wait(seconds: 15)
            #expect(stopped == 0, "\(lab.gatewayLogs)")
            #expect(Self.messages(listener).contains { $0.1.contains("STOPPING=1") }, "\(listener.output)")
        }

        @Test("hmx-emulator: READY once its domains' sockets listen, WATCHDOG, STOPPING")
        func emulator() async throws {
            let directory = try TemporaryDirectory()
            let socket = "\(directory.path)/notify.sock"
            let listener = try ChildProcess("python3", ["-u", "-c", Self.listener, socket])
            let listening = await eventually(within: 10) { listener.output.contains("listening") }
            try #require(listening, "\(listener.log)")
            let config = try directory.write(
                "emulator.yaml",
                "domains:\n  - {id: 1, name: a, socket: \(directory.path)/a.sock}\npolicy:\n  - {action: allow}\n"
            )
            let emulator = try ChildProcess(
                "hmx-emulator",
                ["run", "--config", config],
                environment: ["NOTIFY_SOCKET": socket, "WATCHDOG_USEC": "400000"]
            )
            let ready = await eventually(within: 10) { Self.messages(listener).contains { $0.1.contains("READY=1") } }
            #expect(ready, "\(listener.log)\n\(emulator.log)")
            #expect(FileManager.default.fileExists(atPath: "\(directory.path)/a.sock"))
            let pinged = await eventually(within: 5) {
                Self.messages(listener).filter { $0.1 == ["WATCHDOG=1"] }.count >= 3
            }
            #expect(pinged, "\(listener.output)")
            emulator.signal(SIGTERM)
            #expect(await emulator.wait(seconds: 10) == 0, "\(emulator.log)")
            #expect(Self.messages(listener).contains { $0.1.contains("STOPPING=1") }, "\(listener.output)")
            listener.killGroup()
        }

        @Test(
            "the shipped units (Configs/systemd) pass systemd-analyze verify without a warning",
            .enabled(if: executablePath("systemd-analyze") != nil, "needs systemd-analyze (Debian: systemd)")
        )
        func units() async throws {
            let directory = try TemporaryDirectory()
            let shipped = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
                .appendingPathComponent("../../Configs/systemd").standardized.path
            var paths: [String] = []
            // Installed as /usr/bin/…; verified with the binaries of this build.
            for (name, as_) in [
                ("hmx-emulator.service", "hmx-emulator.service"), ("hmx-gateway@.service", "hmx-gateway@demo.service"),
                ("hmx-gateway@.socket", "hmx-gateway@demo.socket"),
            ] {
                let text = try String(contentsOfFile: "\(shipped)/\(name)", encoding: .utf8)
                    .replacingOccurrences(of: "/usr/bin/hmx-gateway", with: executablePath("hmx-gateway") ?? "")
                    .replacingOccurrences(of: "/usr/bin/hmx-emulator", with: executablePath("hmx-emulator") ?? "")
                paths.append(try directory.write(as_, text))
            }
            let verify = try await HMXProcessTestSupport.run(executablePath("systemd-analyze")!, ["verify"] + paths)
            #expect(verify.status == 0, "\(verify.output)")
            #expect(verify.output.isEmpty, "warnings: \(verify.output)")
        }

        /// What a service manager does for socket activation: bind and listen, put the
        /// socket at descriptor 3, set LISTEN_PID (the same process after exec),
        /// LISTEN_FDS and LISTEN_FDNAMES, and exec the service.
        static let activator = """
            import os, socket, sys
            port, name, program = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", port))
            listener.listen(128)
            os.dup2(listener.fileno(), 3)
            os.set_inheritable(3, True)
            os.environ.update(LISTEN_FDS="1", LISTEN_FDNAMES=name, LISTEN_PID=str(os.getpid()))
            os.execv(program[0], program)
            """

        @Test(
            "socket activation: an import named like the service manager's socket serves it; its own listen: is not bound"
        )
        func socketActivation() async throws {
            let lab = try await GatewayLab()
            try await lab.startBetaFirst()
            let activated = lab.port(75)
            let config = try lab.gatewayConfig(.alpha, exports: [], imports: [lab.echoImport])
            let gateway = try lab.spawn(
                .alpha,
                "python3",
                [
                    "-c", Self.activator, "\(activated)", "echo",
                    executablePath("hmx-gateway") ?? "hmx-gateway", "run", "--config", config,
                ]
            )
            let probe = try await lab.runTool(
                .alpha,
                ["probe", "--port", "\(activated)", "--timeout", "20"],
                seconds: 30
            )
            #expect(probe.status == 0, "\(probe.output)\n\(gateway.log)")
            #expect(gateway.log.contains("listen=socket 3 from the service manager mapping=echo"), "\(gateway.log)")
            let own = try await lab.runTool(
                .alpha,
                ["refused", "--port", "\(lab.echoPort)", "--timeout", "3"],
                seconds: 10
            )
            #expect(jsonObject(own.output)?["end"] as? String == "refused", "listen: not bound: \(own.output)")
            gateway.signal(SIGTERM)
            #expect(await gateway.wait(seconds: 15) == 0, "\(gateway.log)")
        }

        @Test(
            "without NOTIFY_SOCKET nothing is sent and the gateway runs as before; a WATCHDOG_PID not ours is ignored"
        )
        func notManaged() async throws {
            let lab = try await GatewayLab()
            try await lab.startToolServer(.beta, ["echo-server", "--port", "\(lab.echoTarget)"])
            try lab.startGatewaysWithEnvironment(["WATCHDOG_USEC": "400000", "WATCHDOG_PID": "1"])
            let probe = try await lab.runTool(
                .alpha,
                ["probe", "--port", "\(lab.echoPort)", "--timeout", "20"],
                seconds: 30
            )
            #expect(probe.status == 0, "\(probe.output)\n\(lab.gatewayLogs)")
        }
    }
}

extension GatewayLab {
    /// beta's echo server and gateway, up before alpha starts (so that alpha's ring for
    /// beta can exist at once).
    fileprivate func startBetaFirst() async throws {
        try await self.startToolServer(.beta, ["echo-server", "--port", "\(self.echoTarget)"])
        let beta = try self.startGateway(
            .beta,
            config: try self.gatewayConfig(.beta, exports: [self.echoExport], imports: [])
        )
        let up = await eventually(within: 20) { beta.log.contains("gateway ready") }
        try #require(up, "\(beta.log)")
    }

    /// Both gateways with the echo mapping, each with `environment`.
    fileprivate func startGatewaysWithEnvironment(_ environment: [String: String]) throws {
        try self.startGateway(
            .beta,
            config: try self.gatewayConfig(.beta, exports: [self.echoExport], imports: []),
            environment: environment
        )
        try self.startGateway(
            .alpha,
            config: try self.gatewayConfig(.alpha, exports: [], imports: [self.echoImport]),
            environment: environment
        )
    }
}
