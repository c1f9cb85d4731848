// SPDX-License-Identifier: Apache-2.0
#if canImport(Glibc)
import Glibc
#endif

/// Tells the service manager (systemd, `Type=notify`) how the service is doing: the
/// `sd_notify` protocol, one datagram of `KEY=VALUE` lines to the Unix socket named by
/// `NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace). Without
/// `NOTIFY_SOCKET` (not run by a service manager) every call does nothing.
///
/// Watchdog: when the manager sets `WATCHDOG_USEC` (and `WATCHDOG_PID` is unset or
/// ours), ``watchdogInterval`` is half of it; the service sends ``watchdog()`` that
/// often from its event loop, so that a loop that stops turning gets the service
/// restarted.
public final class ServiceManagerNotifier: Sendable {
    private let descriptor: CInt
    private let address: sockaddr_un?
    private let addressLength: socklen_t
    /// Half of `WATCHDOG_USEC`, in microseconds; nil without a watchdog.
    public let watchdogInterval: Int64?

    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` from the environment.
    public convenience init() {
        func variable(_ name: String) -> String? { getenv(name).map { String(cString: $0) } }
        self.init(
            socket: variable("NOTIFY_SOCKET"),
            watchdogMicroseconds: variable("WATCHDOG_USEC").flatMap { Int64($0) },
            watchdogPID: variable("WATCHDOG_PID").flatMap { Int32($0) }
        )
    }

    public init(socket: String?, watchdogMicroseconds: Int64?, watchdogPID: Int32?) {
        if let microseconds = watchdogMicroseconds, microseconds > 0, watchdogPID == nil || watchdogPID == getpid() {
            self.watchdogInterval = microseconds / 2
        } else {
            self.watchdogInterval = nil
        }
        var path = Array((socket ?? "").utf8)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard !path.isEmpty, path.count < capacity, path[0] == UInt8(ascii: "/") || path[0] == UInt8(ascii: "@")
        else {
            self.descriptor = -1
            self.address = nil
            self.addressLength = 0
            return
        }
        let isAbstract = path[0] == UInt8(ascii: "@")
        if isAbstract { path[0] = 0 }
        withUnsafeMutableBytes(of: &address.sun_path) { bytes in
            for (index, byte) in path.enumerated() { bytes[index] = byte }
        }
        self.address = address
        // An abstract name's length counts exactly; a path's includes its terminating NUL.
        self.addressLength = socklen_t(
            MemoryLayout<sa_family_t>.size + path.count + (isAbstract ? 0 : 1)
        )
        self.descriptor = Glibc.socket(AF_UNIX, CInt(SOCK_DGRAM.rawValue) | CInt(SOCK_CLOEXEC.rawValue), 0)
    }

    deinit {
        if self.descriptor >= 0 { close(self.descriptor) }
    }

    /// True when a service manager listens.
    public var isActive: Bool { self.descriptor >= 0 }

    /// Sends `state` (`KEY=VALUE` lines); failures are ignored, as `sd_notify` does.
    public func notify(_ state: String) {
        guard self.descriptor >= 0, var address = self.address else { return }
        var bytes = Array(state.utf8)
        let length = self.addressLength
        _ = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { socketAddress in
                sendto(self.descriptor, &bytes, bytes.count, CInt(MSG_NOSIGNAL), socketAddress, length)
            }
        }
    }

    /// The service is up (`READY=1`), with a one-line status.
    public func ready(status: String) { self.notify("READY=1\nSTATUS=\(status)") }

    /// A reload begins (`RELOADING=1` with the monotonic time, as `Type=notify-reload`
    /// wants); send ``ready(status:)`` when it ends.
    public func reloading() {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        let microseconds = Int64(now.tv_sec) * 1_000_000 + Int64(now.tv_nsec) / 1000
        self.notify("RELOADING=1\nMONOTONIC_USEC=\(microseconds)\nSTATUS=reloading the configuration")
    }

    /// The service is stopping (`STOPPING=1`).
    public func stopping(status: String) { self.notify("STOPPING=1\nSTATUS=\(status)") }

    public func status(_ status: String) { self.notify("STATUS=\(status)") }

    /// The event loop still turns (`WATCHDOG=1`).
    public func watchdog() { self.notify("WATCHDOG=1") }
}
