// SPDX-License-Identifier: Apache-2.0
import CHMXShims
import Foundation
import HMXCore
import HMXEmulator

/// The attach protocol spoken by hand, for tests that behave as a hostile or careless
/// domain process would: connect and say nothing, send a hello and leave, flood
/// hypercalls without reading results.
final class RawDomainSocket {
    let fd: Int32
    /// The domain memory sent with the hello (kept mapped until the socket goes).
    private var memory: SharedMemory?

    /// Connects to a domain's socket (blocking, close-on-exec).
    init(path: String) throws {
        let fd = chmx_unix_stream_socket()
        guard fd >= 0 else { throw POSIXError(.EMFILE) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in raw.copyBytes(from: Array(path.utf8)) }
        let result = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard result == 0 else {
            let error = errno
            close(fd)
            throw POSIXError(POSIXErrorCode(rawValue: error) ?? .EIO)
        }
        self.fd = fd
    }

    /// Sends a well-formed hello with fresh sealed memory of `bytes` bytes.
    func sendHello(memoryBytes bytes: Int = 2 * ArgoABI.pageSize) throws {
        let memory = try SharedMemory(creating: bytes, name: "hmx-test-domain")
        self.memory = memory
        let hello = LinkWire.Hello(memorySize: UInt64(memory.size)).encoded()
        var fds = [memory.fileDescriptor]
        let sent = hello.withUnsafeBytes { raw in chmx_send_with_fds(self.fd, raw.baseAddress, raw.count, &fds, 1) }
        guard sent == hello.count else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
    }

    /// Reads the welcome, waiting at most `seconds`; `nil` if none came.
    func readWelcome(seconds: Int32 = 5) -> LinkWire.Welcome? {
        _ = chmx_set_socket_timeouts(self.fd, seconds * 1000)
        var bytes = [UInt8](repeating: 0, count: LinkWire.Welcome.size)
        let count = bytes.withUnsafeMutableBytes { raw in recv(self.fd, raw.baseAddress, raw.count, Int32(MSG_WAITALL))
        }
        guard count == LinkWire.Welcome.size else { return nil }
        return bytes.withUnsafeBytes { LinkWire.Welcome(parsing: $0) }
    }

    /// Writes as many of `bytes` from `offset` on as the socket takes now, without blocking.
    /// - Returns: the number of bytes written (0 when the socket is full).
    func sendNow(_ bytes: [UInt8], from offset: Int = 0) -> Int {
        let count = bytes.withUnsafeBytes { raw in
            send(self.fd, raw.baseAddress! + offset, raw.count - offset, Int32(MSG_DONTWAIT | MSG_NOSIGNAL))
        }
        return max(count, 0)
    }

    /// `count` hypercall frames of an operation Argo does not have (each answered
    /// with EOPNOTSUPP: cheap, and never logged).
    static func unknownHypercalls(_ count: Int) -> [UInt8] {
        let length = LinkWire.Kind.hypercall.frameLength
        var bytes = [UInt8](repeating: 0, count: count * length)
        bytes.withUnsafeMutableBytes { raw in
            for index in 0..<count {
                let frame = LinkWire.Frame.hypercall(
                    tag: UInt32(index),
                    command: 0xFFFF,
                    arg1: 0,
                    arg2: 0,
                    arg3: 0,
                    arg4: 0
                )
                LinkWire.encode(
                    frame,
                    into: UnsafeMutableRawBufferPointer(rebasing: raw[index * length..<(index + 1) * length])
                )
            }
        }
        return bytes
    }

    deinit { close(self.fd) }
}
