// SPDX-License-Identifier: Apache-2.0
import CXenArgo

#if canImport(Glibc)
import Glibc
#endif

/// A connection to xenstore: small values at paths that both the control domain and a
/// guest (under its own `/local/domain/ID`) can read and write. For test tools that
/// coordinate two domains without Argo (whose events they measure); not used on the
/// data path. Calls block for a round trip to xenstored.
public final class XenStore {
    private let handle: OpaquePointer

    /// A xenstore failure: the operation, the path and the errno.
    public struct Failure: Error, CustomStringConvertible {
        public var operation: String
        public var path: String
        public var errno: Int32
        public var description: String {
            "xenstore \(self.operation) \(self.path): \(String(cString: strerror(self.errno))) (errno \(self.errno))"
        }
    }

    public init() throws(Failure) {
        guard let handle = cxa_store_open() else { throw Failure(operation: "open", path: "", errno: errno) }
        self.handle = handle
    }

    deinit {
        cxa_store_close(self.handle)
    }

    /// The value at `path`, or nil if there is no such node.
    public func read(_ path: String) throws(Failure) -> String? {
        var buffer = [CChar](repeating: 0, count: 4097)
        let length = cxa_store_read(self.handle, path, &buffer, buffer.count)
        if length == -Int(ENOENT) { return nil }
        guard length >= 0 else { throw Failure(operation: "read", path: path, errno: Int32(-length)) }
        return String(decoding: buffer.prefix(length).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    public func write(_ path: String, _ value: String) throws(Failure) {
        let result = cxa_store_write(self.handle, path, value)
        guard result == 0 else { throw Failure(operation: "write", path: path, errno: -result) }
    }

    public func remove(_ path: String) throws(Failure) {
        let result = cxa_store_remove(self.handle, path)
        guard result == 0 || result == -ENOENT else { throw Failure(operation: "remove", path: path, errno: -result) }
    }
}

@available(*, unavailable)
extension XenStore: Sendable {}
