// SPDX-License-Identifier: Apache-2.0
import Foundation
import HMXProcessTestSupport
import Testing

/// The real programs, as a user runs them: hmx-emulator and hmx-cat processes.
@Suite("hmx-emulator and hmx-cat processes", .serialized)
struct ProcessTests {
    @Test("two processes exchange 1 GiB through the emulator, checksums equal")
    func oneGibibyte() async throws {
        let directory = try TemporaryDirectory()
        let (emulator, _) = try await startEmulator(in: directory)
        let bytes = 1 << 30
        let receiver = try ChildProcess.shell(
            "hmx-cat listen --socket \(directory.path)/b.sock --port 4000 --from 1 --ring-size 1048512 --raw --bytes \(bytes) | sha256sum"
        )
        // The partner ring needs domain 1 to exist: the listener waits for it, and the
        // sender retries until the ring is there.
        let sender = try ChildProcess.shell(
            "head -c \(bytes) /dev/urandom | tee >(sha256sum > \(directory.path)/sent.sha) | hmx-cat send --socket \(directory.path)/a.sock 2:4000 --chunk 65536 --wait 30"
        )
        let senderStatus = await sender.wait(seconds: 600)
        let receiverStatus = await receiver.wait(seconds: 60)
        #expect(senderStatus == 0, "sender: \(sender.errorOutput)")
        #expect(receiverStatus == 0, "receiver: \(receiver.errorOutput)")
        let sent = try String(contentsOfFile: "\(directory.path)/sent.sha", encoding: .utf8)
        #expect(sent.count > 64)
        #expect(receiver.output.prefix(64) == sent.prefix(64), "checksums differ")
        emulator.signal(SIGTERM)
        #expect(await emulator.wait(seconds: 10) == 0)
    }

    @Test("SIGHUP reloads the policy without losing rings; a bad reload keeps the old one")
    func reloadOnHangup() async throws {
        let directory = try TemporaryDirectory()
        let (emulator, config) = try await startEmulator(in: directory, policy: "  - {action: deny}")
        let listener = try ChildProcess(
            "hmx-cat",
            ["listen", "--socket", "\(directory.path)/b.sock", "--port", "7", "--count", "1"]
        )
        try await Task.sleep(nanoseconds: 500_000_000)
        let denied = try ChildProcess(
            "hmx-cat",
            ["send", "--socket", "\(directory.path)/a.sock", "2:7", "--message", "no"]
        )
        #expect(await denied.wait(seconds: 20) == 15, "EACCES exit status: \(denied.errorOutput)")
        #expect(denied.errorOutput.contains("EACCES"))
        #expect(emulator.errorOutput.contains("denied by emulator policy"))

        // A broken file is rejected and the emulator keeps running.
        try "domains: [".write(toFile: config, atomically: true, encoding: .utf8)
        emulator.signal(SIGHUP)
        #expect(await eventually { emulator.errorOutput.contains("reload rejected") })

        let allowing = """
            mac_permissive: true
            domains:
              - {id: 1, name: a, socket: \(directory.path)/a.sock}
              - {id: 2, name: b, socket: \(directory.path)/b.sock}
            policy:
              - {action: allow, from: a, to: b, port: 7}
            """
        try allowing.write(toFile: config, atomically: true, encoding: .utf8)
        emulator.signal(SIGHUP)
        #expect(await eventually { emulator.errorOutput.contains("configuration reloaded") })
        let allowed = try ChildProcess(
            "hmx-cat",
            ["send", "--socket", "\(directory.path)/a.sock", "2:7", "--message", "yes"]
        )
        #expect(await allowed.wait(seconds: 20) == 0, "\(allowed.errorOutput)")
        #expect(await listener.wait(seconds: 20) == 0)
        #expect(listener.output == "from 1:0 type 0x6447724d 3 bytes: yes\n")
        emulator.signal(SIGTERM)
        #expect(await emulator.wait(seconds: 10) == 0)
    }

    @Test("a bad configuration is one line naming file, line and key, exit status 2")
    func badConfiguration() async throws {
        let directory = try TemporaryDirectory()
        let config = try directory.write(
            "bad.yaml",
            "domains:\n  - {id: 1, name: a, socket: /tmp/x.sock, colour: red}\n"
        )
        for arguments in [["run", "--config", config], ["check-config", config]] {
            let emulator = try ChildProcess("hmx-emulator", arguments)
            #expect(await emulator.wait(seconds: 20) == 2)
            #expect(
                emulator.errorOutput
                    == "hmx-emulator: \(config):2: domains[0].colour: unknown key (expected one of: id, name, socket, uid, argo, max_memory_mib)\n"
            )
        }
    }

    @Test("hmx-cat exit statuses name each Argo error")
    func exitStatuses() async throws {
        let directory = try TemporaryDirectory()
        let (emulator, _) = try await startEmulator(in: directory, policy: "  - {action: allow, to: b, port: 1-100}")
        let noDomain = try ChildProcess(
            "hmx-cat",
            ["send", "--socket", "\(directory.path)/a.sock", "9:1", "--message", "x"]
        )
        #expect(await noDomain.wait(seconds: 20) == 12)
        #expect(noDomain.errorOutput.contains("ESRCH"))
        let listener = try ChildProcess(
            "hmx-cat",
            ["listen", "--socket", "\(directory.path)/b.sock", "--port", "5", "--count", "1", "--ring-size", "4032"]
        )
        try await Task.sleep(nanoseconds: 500_000_000)
        let noRing = try ChildProcess(
            "hmx-cat",
            ["send", "--socket", "\(directory.path)/a.sock", "2:6", "--message", "x"]
        )
        #expect(await noRing.wait(seconds: 20) == 25)
        #expect(noRing.errorOutput.contains("ECONNREFUSED"))
        let policy = try ChildProcess(
            "hmx-cat",
            ["send", "--socket", "\(directory.path)/a.sock", "2:500", "--message", "x"]
        )
        #expect(await policy.wait(seconds: 20) == 15)
        // A 4032-byte ring takes at most 4000 bytes per message.
        let tooBig = try ChildProcess(
            "hmx-cat",
            ["send", "--socket", "\(directory.path)/a.sock", "2:5", "--message", String(repeating: "z", count: 4001)]
        )
        #expect(await tooBig.wait(seconds: 20) == 23, "\(tooBig.errorOutput)")
        let noSocket = try ChildProcess(
            "hmx-cat",
            ["send", "--socket", "\(directory.path)/none.sock", "2:5", "--message", "x"]
        )
        #expect(await noSocket.wait(seconds: 20) == 3)
        let ok = try ChildProcess(
            "hmx-cat",
            ["send", "--socket", "\(directory.path)/a.sock", "2:5", "--message", "fine"]
        )
        #expect(await ok.wait(seconds: 20) == 0)
        #expect(await listener.wait(seconds: 20) == 0)
        emulator.signal(SIGTERM)
        _ = await emulator.wait(seconds: 10)
    }
}
