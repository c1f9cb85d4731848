// SPDX-License-Identifier: Apache-2.0
public import Foundation

/// Where the package's executables were built (next to the test bundle), or
/// `HMX_BIN_DIR` if set.
public let binDirectory: String = {
    if let explicit = ProcessInfo.processInfo.environment["HMX_BIN_DIR"] { return explicit }
    var url = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    while url.path != "/" {
        if FileManager.default.isExecutableFile(atPath: url.appendingPathComponent("hmx-emulator").path) {
            return url.path
        }
        url = url.deletingLastPathComponent()
    }
    return URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../.build/debug")
        .standardized.path
}()

/// The full path of a program: one of the package's executables if built, otherwise the
/// first match in the system's binary folders; `nil` if there is none.
public func executablePath(_ name: String) -> String? {
    if name.hasPrefix("/") { return FileManager.default.isExecutableFile(atPath: name) ? name : nil }
    for folder in [binDirectory, "/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"] {
        let candidate = "\(folder)/\(name)"
        if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
    }
    return nil
}

/// A child process with captured output, always killed when the test ends.
public final class ChildProcess: @unchecked Sendable {
    // @unchecked: Process is used from the test task only.
    public let process = Process()
    public let outputURL: URL
    public let errorURL: URL

    /// Starts `executable` (a package executable's name, a system program's name, or a
    /// path) with `arguments`; `environment` is merged over the test's own; standard
    /// input is the file at `standardInput`, or empty.
    public init(
        _ executable: String,
        _ arguments: [String],
        environment: [String: String] = [:],
        standardInput: String? = nil
    ) throws {
        let directory = FileManager.default.temporaryDirectory
        self.outputURL = directory.appendingPathComponent("out-\(UUID().uuidString)")
        self.errorURL = directory.appendingPathComponent("err-\(UUID().uuidString)")
        _ = FileManager.default.createFile(atPath: self.outputURL.path, contents: nil)
        _ = FileManager.default.createFile(atPath: self.errorURL.path, contents: nil)
        let path =
            executablePath(executable) ?? (executable.hasPrefix("/") ? executable : "\(binDirectory)/\(executable)")
        self.process.executableURL = URL(fileURLWithPath: path)
        self.process.arguments = arguments
        self.process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        let output = try FileHandle(forWritingTo: self.outputURL)
        let error = try FileHandle(forWritingTo: self.errorURL)
        let input = try standardInput.map { try FileHandle(forReadingFrom: URL(fileURLWithPath: $0)) }
        self.process.standardOutput = output
        self.process.standardError = error
        self.process.standardInput = input ?? FileHandle.nullDevice
        try self.process.run()
        // The child has its own copies. Foundation keeps the Process (and these) alive
        // past this object, so without closing them each child costs this process two
        // or three descriptors for ever; with over 1,300 open, Foundation's Process.run
        // can crash reading /proc/self/fd (swift-corelibs-foundation #5472).
        try? output.close()
        try? error.close()
        try? input?.close()
        self.leadsGroup = getpgid(self.process.processIdentifier) == self.process.processIdentifier
    }

    /// The child leads its own process group (Foundation starts it so), and so do the
    /// programs a shell script starts: killing the group leaves no orphan behind (a
    /// pipeline's `socat` still waiting for a client, say).
    private var leadsGroup = false

    /// SIGKILL for the child and, while it runs, everything in its process group.
    public func killGroup() {
        guard self.process.isRunning else { return }
        if self.leadsGroup { kill(-self.process.processIdentifier, SIGKILL) }
        kill(self.process.processIdentifier, SIGKILL)
    }

    /// A shell pipeline (bash), for tests that need pipes between real programs.
    public static func shell(_ script: String) throws -> ChildProcess {
        try ChildProcess(
            "/bin/bash",
            ["-c", script],
            environment: ["PATH": "\(binDirectory):/usr/bin:/bin:/usr/sbin:/sbin"]
        )
    }

    public var output: String { (try? String(contentsOf: self.outputURL, encoding: .utf8)) ?? "" }
    public var errorOutput: String { (try? String(contentsOf: self.errorURL, encoding: .utf8)) ?? "" }
    /// Standard output and standard error together, for searching logs.
    public var log: String { self.output + self.errorOutput }
    public var pid: Int32 { self.process.processIdentifier }
    public var isRunning: Bool { self.process.isRunning }

    /// Waits for exit up to `seconds`; kills the process if it is still running.
    /// - Returns: the exit status, or `nil` if the process had to be killed.
    @discardableResult
    public func wait(seconds: Double) async -> Int32? {
        let deadline = Date().addingTimeInterval(seconds)
        while self.process.isRunning, Date() < deadline {
            try? await Task.sleep(nanoseconds: 20_000_000)
        }
        if self.process.isRunning {
            self.process.terminate()
            try? await Task.sleep(nanoseconds: 200_000_000)
            self.killGroup()
            return nil
        }
        return self.process.terminationStatus
    }

    public func signal(_ signal: Int32) { kill(self.process.processIdentifier, signal) }

    /// Resident memory (`VmRSS` of `/proc/PID/status`) in KiB, `nil` once the process is gone.
    public func residentKiB() -> Int? {
        guard let status = try? String(contentsOfFile: "/proc/\(self.pid)/status", encoding: .utf8) else { return nil }
        guard let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }) else { return nil }
        return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "")
    }

    /// CPU time used so far (user + system, from `/proc/PID/stat`) in seconds, `nil`
    /// once the process is gone.
    public func cpuSeconds() -> Double? {
        guard let stat = try? String(contentsOfFile: "/proc/\(self.pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return nil }
        // After "pid (comm)": state is field 3; utime and stime are fields 14 and 15.
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return nil }
        return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    deinit {
        self.killGroup()
        try? FileManager.default.removeItem(at: self.outputURL)
        try? FileManager.default.removeItem(at: self.errorURL)
    }
}

/// Runs a program to completion within `seconds`.
/// - Returns: its exit status (`nil` if it had to be killed) and its output.
public func run(
    _ executable: String,
    _ arguments: [String],
    standardInput: String? = nil,
    seconds: Double = 30
) async throws -> (status: Int32?, output: String) {
    let child = try ChildProcess(executable, arguments, standardInput: standardInput)
    let status = await child.wait(seconds: seconds)
    return (status, child.log)
}

/// A temporary folder removed at the end.
public final class TemporaryDirectory: @unchecked Sendable {
    public let path: String
    public init() throws {
        self.path = NSTemporaryDirectory() + "hmx-proc-" + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: self.path, withIntermediateDirectories: true)
    }
    public func write(_ name: String, _ text: String) throws -> String {
        let file = "\(self.path)/\(name)"
        try text.write(toFile: file, atomically: true, encoding: .utf8)
        return file
    }
    deinit { try? FileManager.default.removeItem(atPath: self.path) }
}

/// Polls `condition` every 20 ms until it holds or `seconds` have passed.
/// - Returns: whether it held.
public func eventually(within seconds: Double = 5, _ condition: () async throws -> Bool) async rethrows -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if try await condition() { return true }
        try? await Task.sleep(nanoseconds: 20_000_000)
    }
    return try await condition()
}

/// Starts hmx-emulator with `domains` (each attached over `DIRECTORY/NAME.sock`) and
/// waits for their sockets.
public func startEmulator(
    in directory: TemporaryDirectory,
    domains: [(id: UInt16, name: String)] = [(1, "a"), (2, "b")],
    policy: String = "  - {action: allow}",
    macPermissive: Bool = true,
    arguments: [String] = []
) async throws -> (ChildProcess, config: String) {
    let domainLines = domains.map { "  - {id: \($0.id), name: \($0.name), socket: \(directory.path)/\($0.name).sock}" }
    let config = try directory.write(
        "emulator.yaml",
        """
        mac_permissive: \(macPermissive)
        domains:
        \(domainLines.joined(separator: "\n"))
        policy:
        \(policy)
        control_socket: \(directory.path)/emulator.control

        """
    )
    let emulator = try ChildProcess("hmx-emulator", ["run", "--config", config] + arguments)
    let ready = await eventually(within: 10) {
        domains.allSatisfy { FileManager.default.fileExists(atPath: "\(directory.path)/\($0.name).sock") }
    }
    if !ready {
        throw CocoaError(
            .fileNoSuchFile,
            userInfo: [NSLocalizedDescriptionKey: "emulator did not start: \(emulator.errorOutput)"]
        )
    }
    return (emulator, config)
}
