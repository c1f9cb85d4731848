// SPDX-License-Identifier: Apache-2.0
import ArgumentParser
import HMXCommandLine
import HMXCore
import HMXEmulator
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

@main
struct HMXCat: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hmx-cat",
        abstract: "netcat for HMX (Argo) datagrams: listen on a ring, or send standard input as messages.",
        discussion: """
            The domain this process acts as is decided by the hypervisor: with the emulator, by \
            the domain socket you connect to (--socket or HMX_EMULATOR_SOCKET).

            Exit status: 0 success; 3 cannot attach; 4 link lost; \
            \(ExitStatus.table.map { "\($0.code) \($0.errno.name)" }.joined(separator: ", ")).
            """,
        version: hmxVersion,
        subcommands: [Listen.self, Send.self, Flood.self],
    )
}

/// Options shared by every subcommand.
struct LinkOptions: ParsableArguments {
    @Option(name: .long, help: "The emulator socket of the domain to act as (default: $HMX_EMULATOR_SOCKET).")
    var socket: String?

    func attach() async throws -> EmulatorLink {
        let path = self.socket ?? getenv("HMX_EMULATOR_SOCKET").map { String(cString: $0) }
        guard let path, !path.isEmpty else {
            throw ValidationError("no emulator socket: pass --socket PATH or set HMX_EMULATOR_SOCKET")
        }
        do {
            return try await EmulatorLink.attach(socketPath: path)
        } catch {
            printError("hmx-cat: cannot attach: \(error)")
            throw ExitCode(ExitStatus.attachFailed)
        }
    }
}

/// Distinct exit statuses, one per Argo error.
enum ExitStatus {
    static let attachFailed: Int32 = 3
    static let linkLost: Int32 = 4
    static let table: [(errno: ArgoErrno, code: Int32)] = [
        (.EPERM, 10), (.ENOENT, 11), (.ESRCH, 12), (.EAGAIN, 13), (.ENOMEM, 14), (.EACCES, 15),
        (.EFAULT, 16), (.EBUSY, 17), (.EEXIST, 18), (.ENODEV, 19), (.EINVAL, 20), (.ENOSPC, 21),
        (.ENOSYS, 22), (.EMSGSIZE, 23), (.EOPNOTSUPP, 24), (.ECONNREFUSED, 25),
    ]

    /// Prints what went wrong and returns the exit code for it.
    static func fail(_ error: any Error, doing what: String) -> ExitCode {
        guard let error = error as? HMXError else {
            printError("hmx-cat: \(what): \(error)")
            return ExitCode(1)
        }
        if let errno = error.errno {
            printError("hmx-cat: \(what): \(errno.name): \(errno.meaning)")
            return ExitCode(self.table.first { $0.errno == errno }?.code ?? 1)
        }
        printError("hmx-cat: \(what): \(error)")
        return ExitCode(error.code == .linkClosed ? self.linkLost : 1)
    }
}

/// `any` or a domain id.
struct PartnerArgument: ExpressibleByArgument {
    var domain: DomainID
    init?(argument: String) {
        if argument == "any" {
            self.domain = .any
        } else if let value = parseInteger(argument, as: UInt16.self), DomainID(value).isOrdinary {
            self.domain = DomainID(value)
        } else {
            return nil
        }
    }
}

extension HMXAddress: ExpressibleByArgument {
    public init?(argument: String) { self.init(parsing: argument) }
}

/// Writes all bytes to a file descriptor, retrying on EINTR and short writes.
func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> Bool {
    var offset = 0
    while offset < bytes.count {
        let written = write(fd, bytes.baseAddress! + offset, bytes.count - offset)
        if written < 0 {
            if errno == EINTR { continue }
            return false
        }
        offset += written
    }
    return true
}

func monotonicSeconds() -> Double {
    var spec = timespec()
    clock_gettime(CLOCK_MONOTONIC, &spec)
    return Double(spec.tv_sec) + Double(spec.tv_nsec) / 1e9
}
