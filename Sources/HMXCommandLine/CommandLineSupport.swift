// SPDX-License-Identifier: Apache-2.0
import ArgumentParser
import Dispatch
import HMXControl
import Logging
import ServiceLifecycle
import UnixSignals

#if canImport(Glibc)
import Glibc
#endif

/// Writes one line to standard error (unbuffered, safe from any thread).
public func printError(_ line: String) {
    var text = line
    if !text.hasSuffix("\n") { text += "\n" }
    text.withUTF8 { bytes in
        var offset = 0
        while offset < bytes.count {
            let written = write(2, bytes.baseAddress! + offset, bytes.count - offset)
            if written <= 0 {
                if written < 0 && errno == EINTR { continue }
                return
            }
            offset += written
        }
    }
}

/// Sends swift-log output to standard error at the given level.
public func bootstrapLogging(level: Logger.Level) {
    LoggingSystem.bootstrap { label in
        var handler = StreamLogHandler.standardError(label: label)
        handler.logLevel = level
        return handler
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}

/// Runs one long-lived service until SIGTERM or SIGINT shuts it down gracefully;
/// a failure is printed as one line prefixed with the tool's name, exit status 1.
public func runUntilSignalled(_ service: some Service, tool: String, logger: Logger) async throws {
    let group = ServiceGroup(
        configuration: .init(
            services: [.init(service: service)],
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger
        )
    )
    do {
        try await group.run()
    } catch {
        printError("\(tool): \(error)")
        throw ExitCode(1)
    }
}

/// Runs `body` in a task while the calling thread waits for it (an ordinary blocked
/// thread: it takes signals, such as glibc's for changing every thread's user).
public func blockUntilDone(_ body: @escaping @Sendable () async throws -> Void) throws {
    final class Outcome: @unchecked Sendable {
        // Written by the task before it signals, read after the wait.
        var error: (any Error)?
    }
    let outcome = Outcome()
    let done = DispatchSemaphore(value: 0)
    Task.detached {
        do { try await body() } catch { outcome.error = error }
        done.signal()
    }
    done.wait()
    if let error = outcome.error { throw error }
}

/// `status`: asks a daemon on its control socket and prints the answer. Exit status 0
/// when it says it is ready, 1 when it answered but is not, 2 when it could not be asked.
public func printStatus(tool: String, socket path: String, json: Bool, ready: (String) -> Bool) throws {
    let answer: String
    do {
        answer = try ControlSocket.ask(.status(json: json), path: path)
    } catch {
        printError("\(tool): cannot ask the \(tool) at \(path): \(error) (is it running? run as root or its user)")
        throw ExitCode(2)
    }
    if answer.hasPrefix("error: ") || answer.isEmpty {
        printError("\(tool): \(answer.isEmpty ? "no answer from \(path)" : answer)")
        throw ExitCode(2)
    }
    print(answer, terminator: "")
    if !ready(answer) { throw ExitCode(1) }
}

/// What `status` asks: `--config FILE` (its `control_socket:`) or `--socket PATH`, and
/// `--json`.
public struct StatusOptions: ParsableArguments {
    @Option(name: .shortAndLong, help: "The daemon's configuration file (its control_socket: is asked).")
    public var config: String?

    @Option(help: "The control socket to ask (instead of --config).")
    public var socket: String?

    @Flag(help: "Print JSON (for scripts) instead of text.")
    public var json = false

    public init() {}

    public func validate() throws {
        if (self.config == nil) == (self.socket == nil) {
            throw ValidationError("give --config FILE or --socket PATH")
        }
    }

    /// The socket to ask: `--socket`, or the configuration's (`controlSocket` reads
    /// it from the file; nil there means none is configured, exit status 2).
    public func socketPath(tool: String, controlSocket: (String) -> String?) throws -> String {
        if let socket = self.socket { return socket }
        guard let socket = controlSocket(self.config!) else {
            printError("\(tool): \(self.config!): no control_socket: is configured, so it cannot be asked")
            throw ExitCode(2)
        }
        return socket
    }
}
