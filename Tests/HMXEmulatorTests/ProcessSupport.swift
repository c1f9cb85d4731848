// SPDX-License-Identifier: Apache-2.0
import Foundation

/// Where the package's executables were built (next to the test bundle), or
/// `HMX_BIN_DIR` if set.
let binDirectory: String = {
    if let explicit = ProcessInfo.processInfo.environment["HMX_BIN_DIR"] { return explicit }
    var url = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    while url.path != "/" {
        if FileManager.default.isExecutableFile(atPath: url.appendingPathComponent("hmx-cat").path) { return url.path }
        url = url.deletingLastPathComponent()
    }
    return URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../.build/debug").standardized.path
}()

/// A child process with captured output, always killed when the test ends.
final class ChildProcess: @unchecked Sendable {
    // @unchecked: Process is used from the test task only.
    let process = Process()
    let outputURL: URL
    let errorURL: URL

    init(_ executable: String, _ arguments: [String], environment: [String: String] = [:]) throws {
        let directory = FileManager.default.temporaryDirectory
        self.outputURL = directory.appendingPathComponent("out-\(UUID().uuidString)")
        self.errorURL = directory.appendingPathComponent("err-\(UUID().uuidString)")
        _ = FileManager.default.createFile(atPath: self.outputURL.path, contents: nil)
        _ = FileManager.default.createFile(atPath: self.errorURL.path, contents: nil)
        self.process.executableURL = URL(fileURLWithPath: executable.hasPrefix("/") ? executable : "\(binDirectory)/\(executable)")
        self.process.arguments = arguments
        self.process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        self.process.standardOutput = try FileHandle(forWritingTo: self.outputURL)
        self.process.standardError = try FileHandle(forWritingTo: self.errorURL)
        self.process.standardInput = FileHandle.nullDevice
        try self.process.run()
    }

    /// A shell pipeline (bash), for tests that need pipes between real programs.
    static func shell(_ script: String) throws -> ChildProcess {
        try ChildProcess("/bin/bash", ["-c", script], environment: ["PATH": "\(binDirectory):/usr/bin:/bin"])
    }

    var output: String { (try? String(contentsOf: self.outputURL, encoding: .utf8)) ?? "" }
    var errorOutput: String { (try? String(contentsOf: self.errorURL, encoding: .utf8)) ?? "" }

    /// Waits for exit up to `seconds`; kills the process if it is still running.
    @discardableResult
    func wait(seconds: Double) async -> Int32? {
        let deadline = Date().addingTimeInterval(seconds)
        while self.process.isRunning, Date() < deadline {
            try? await Task.sleep(nanoseconds: 20_000_000)
        }
        if self.process.isRunning {
            self.process.terminate()
            try? await Task.sleep(nanoseconds: 200_000_000)
            if self.process.isRunning { kill(self.process.processIdentifier, SIGKILL) }
            return nil
        }
        return self.process.terminationStatus
    }

    func signal(_ signal: Int32) { kill(self.process.processIdentifier, signal) }

    deinit {
        if self.process.isRunning { kill(self.process.processIdentifier, SIGKILL) }
        try? FileManager.default.removeItem(at: self.outputURL)
        try? FileManager.default.removeItem(at: self.errorURL)
    }
}

/// A temporary folder removed at the end.
final class TemporaryDirectory: @unchecked Sendable {
    let path: String
    init() throws {
        self.path = NSTemporaryDirectory() + "hmx-proc-" + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: self.path, withIntermediateDirectories: true)
    }
    func write(_ name: String, _ text: String) throws -> String {
        let file = "\(self.path)/\(name)"
        try text.write(toFile: file, atomically: true, encoding: .utf8)
        return file
    }
    deinit { try? FileManager.default.removeItem(atPath: self.path) }
}

/// Starts hmx-emulator with two domains (a=1, b=2) and waits for its sockets.
func startEmulator(in directory: TemporaryDirectory, policy: String = "  - {action: allow}", macPermissive: Bool = true) async throws
    -> (ChildProcess, config: String)
{
    let config = try directory.write(
        "emulator.yaml",
        """
        mac_permissive: \(macPermissive)
        domains:
          - {id: 1, name: a, socket: \(directory.path)/a.sock}
          - {id: 2, name: b, socket: \(directory.path)/b.sock}
        policy:
        \(policy)

        """
    )
    let emulator = try ChildProcess("hmx-emulator", ["run", "--config", config])
    let ready = await eventually(within: 10) {
        FileManager.default.fileExists(atPath: "\(directory.path)/a.sock") && FileManager.default.fileExists(atPath: "\(directory.path)/b.sock")
    }
    if !ready {
        throw CocoaError(.fileNoSuchFile, userInfo: [NSLocalizedDescriptionKey: "emulator did not start: \(emulator.errorOutput)"])
    }
    return (emulator, config)
}
