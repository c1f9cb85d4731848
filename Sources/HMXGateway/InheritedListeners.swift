// SPDX-License-Identifier: Apache-2.0
#if canImport(Glibc)
import Glibc
#endif

/// Listening sockets handed over by the service manager (socket activation: systemd's
/// `LISTEN_FDS`, `LISTEN_PID` and `LISTEN_FDNAMES`, descriptors from 3 on). An import
/// whose name is a descriptor's name (`FileDescriptorName=` in the `.socket` unit)
/// serves that socket instead of binding its `listen:`, so clients can connect before
/// the gateway runs and while it restarts.
public struct InheritedListeners: Sendable {
    /// Descriptor by name, not yet taken by an import.
    public private(set) var byName: [String: CInt]

    public init(byName: [String: CInt] = [:]) {
        self.byName = byName
    }

    /// Reads the variables (only if `LISTEN_PID` is this process), then removes them
    /// so that nothing started later takes them for its own.
    public static func fromEnvironment() -> InheritedListeners {
        func variable(_ name: String) -> String? { getenv(name).map { String(cString: $0) } }
        defer {
            unsetenv("LISTEN_PID")
            unsetenv("LISTEN_FDS")
            unsetenv("LISTEN_FDNAMES")
        }
        guard let pid = variable("LISTEN_PID").flatMap({ Int32($0) }), pid == getpid(),
            let count = variable("LISTEN_FDS").flatMap({ Int($0) }), count > 0, count < 4096
        else { return InheritedListeners() }
        let names = (variable("LISTEN_FDNAMES") ?? "").split(separator: ":", omittingEmptySubsequences: false)
        var byName: [String: CInt] = [:]
        for index in 0..<count {
            let descriptor = CInt(3 + index)
            _ = fcntl(descriptor, F_SETFD, FD_CLOEXEC)
            let name = index < names.count && !names[index].isEmpty ? String(names[index]) : "unknown"
            byName[name] = descriptor
        }
        return InheritedListeners(byName: byName)
    }

    /// The descriptor named `name`, once.
    mutating func take(_ name: String) -> CInt? {
        self.byName.removeValue(forKey: name)
    }
}
