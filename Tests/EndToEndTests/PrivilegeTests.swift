// SPDX-License-Identifier: Apache-2.0
import Foundation
import HMXProcessTestSupport
import Testing

extension GatewayEndToEndTests {
    /// `user:` / `group:`: the gateway binds and attaches as root, then runs as the
    /// user with no capabilities. Needs root to start with (as CI runs).
    @Suite("least privilege", .enabled(if: getuid() == 0, "dropping privileges needs a root start"))
    struct LeastPrivilege {
        /// The `Name:` line of a task's status file, split into its values.
        static func status(_ path: String, _ name: String) -> [String] {
            guard let text = try? String(contentsOfFile: path, encoding: .utf8),
                let line = text.split(separator: "\n").first(where: { $0.hasPrefix("\(name):") })
            else { return [] }
            return line.dropFirst(name.count + 1).split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
        }

        /// Every thread of the process (that have not exited).
        static func expectDropped(_ pid: Int32, _ when: String) {
            let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
            let running = tasks.map { "/proc/\(pid)/task/\($0)/status" }.filter {
                Self.status($0, "State").first != "Z"
            }
            #expect(running.count >= 2, "\(when): \(tasks)")
            for task in running {
                #expect(Self.status(task, "Uid") == ["65534", "65534", "65534", "65534"], "\(task) \(when)")
                #expect(Self.status(task, "Gid") == ["65534", "65534", "65534", "65534"], "\(task) \(when)")
                #expect(Self.status(task, "Groups") == [], "\(task) \(when)")
                for set in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
                    #expect(Self.status(task, set) == ["0000000000000000"], "\(set) of \(task) \(when)")
                }
            }
        }

        @Test(
            "runs as nobody with no capabilities after start and after a reload; a new privileged bind is refused clearly, the rest applies"
        )
        func dropped() async throws {
            let lab = try await GatewayLab()
            let privileged = 700 + Int.random(in: 0..<200)
            let unprivileged = lab.port(70)
            let control = "\(lab.directory.path)/alpha.control"
            try await lab.startGateways(extra: [.alpha: "user: nobody\ngroup: nogroup\ncontrol_socket: \(control)\n"])
            let gateway = try #require(lab.gateways[.alpha])
            Self.expectDropped(gateway.pid, "after start")
            #expect(gateway.log.contains("privileges dropped"), "\(gateway.log)")
            // The control socket belongs to the user the gateway runs as, mode 0600.
            var info = stat()
            #expect(lstat(control, &info) == 0 && info.st_uid == 65534 && info.st_gid == 65534, "\(info)")
            #expect(info.st_mode & 0o777 == 0o600)
            let status = try await lab.run(.alpha, "hmx-gateway", ["status", "--socket", control])
            #expect(status.status == 0 && status.output.contains(", ready, "), "\(status.output)")

            // Reload: one import on a privileged port (needs root), one on an ordinary one.
            let config = try lab.gatewayConfig(
                .alpha,
                exports: [],
                imports: [
                    lab.echoImport,
                    .init(name: "low", listen: "tcp://127.0.0.1:\(privileged)", port: 7),
                    .init(name: "high", listen: "tcp://127.0.0.1:\(unprivileged)", port: 7),
                ],
                extra: "user: nobody\ngroup: nogroup\n"
            )
            #expect(config.hasSuffix("gateway-alpha.yaml"))
            gateway.signal(SIGHUP)
            let said = await eventually(within: 10) {
                gateway.log.contains("needs privileges this gateway gave up")
            }
            #expect(said, "\(gateway.log)")
            let probe = try await lab.runTool(
                .alpha,
                ["probe", "--port", "\(unprivileged)", "--timeout", "10"],
                seconds: 20
            )
            #expect(
                probe.status == 0,
                "the unprivileged import of the same reload works: \(probe.output)\n\(gateway.log)"
            )
            Self.expectDropped(gateway.pid, "after the reload")
        }

        @Test(
            "the emulator runs as nobody with no capabilities once its sockets are bound; gateways still attach and carry streams"
        )
        func emulator() async throws {
            let lab = try await GatewayLab(emulatorConfig: { directory in
                (
                    """
                    user: nobody
                    group: nogroup
                    control_socket: \(directory)/emulator.control
                    domains:
                      - {id: 1, name: alpha, socket: \(directory)/alpha.sock}
                      - {id: 2, name: beta, socket: \(directory)/beta.sock, uid: 0}
                    policy:
                    \(GatewayLab.openPolicy)
                    """,
                    ["\(directory)/alpha.sock", "\(directory)/beta.sock"]
                )
            })
            let dropped = await eventually(within: 10) { lab.emulator.log.contains("privileges dropped") }
            #expect(dropped, "\(lab.emulator.log)")
            Self.expectDropped(lab.emulator.pid, "the emulator after start")
            // Its control socket belongs to the user it runs as; root still asks it.
            var info = stat()
            #expect(lstat("\(lab.directory.path)/emulator.control", &info) == 0 && info.st_uid == 65534)
            try await lab.startGateways()
            let status = try await HMXProcessTestSupport.run(
                executablePath("hmx-emulator") ?? "hmx-emulator",
                ["status", "--socket", "\(lab.directory.path)/emulator.control"],
                seconds: 20
            )
            #expect(status.output.contains("2 of 2 domains attached"), "\(status.output)")
            Self.expectDropped(lab.emulator.pid, "the emulator with two domains attached")
        }

        @Test("a user that does not exist stops the start, naming the file and key")
        func unknownUser() async throws {
            let lab = try await GatewayLab()
            let config = try lab.gatewayConfig(
                .alpha,
                exports: [],
                imports: [lab.echoImport],
                extra: "user: no-such-user-hmx\n"
            )
            let gateway = try lab.startGateway(.alpha, config: config)
            let status = await gateway.wait(seconds: 15)
            #expect(status != 0 && status != nil, "\(gateway.log)")
            #expect(gateway.log.contains("\(config): user: no such user 'no-such-user-hmx'"), "\(gateway.log)")
        }
    }
}
