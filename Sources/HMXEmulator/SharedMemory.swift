// SPDX-License-Identifier: Apache-2.0
import CHMXShims
import HMXCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A domain's memory: a sealed memfd mapped into this process.
///
/// In the emulator's model a domain process owns its memory; it hands the memfd to the
/// emulator when it attaches (as guest RAM is visible to Xen), and nobody else ever
/// maps it. Guest addresses are byte offsets into this memory; the first page is never
/// valid, so that address 0 is NULL. The memfd must be sealed against shrinking and
/// growing: otherwise the owner could truncate it and make the emulator fault.
public final class SharedMemory: @unchecked Sendable {
    // @unchecked: the mapping itself is immutable; concurrent access to the bytes is
    // the point of shared memory and is ordered by the Argo ring protocol's atomics.
    public let base: UnsafeMutableRawPointer
    public let size: Int
    public let fileDescriptor: Int32

    /// Creates new zeroed memory of `size` bytes (rounded up to pages), sealed.
    public init(creating size: Int, name: String) throws {
        let rounded = (size + ArgoABI.pageSize - 1) / ArgoABI.pageSize * ArgoABI.pageSize
        let fd = chmx_memfd_create(name)
        guard fd >= 0 else { throw HMXError(code: .resourceExhausted, message: "memfd_create failed: errno \(errno)") }
        guard ftruncate(fd, off_t(rounded)) == 0, chmx_memfd_seal(fd) == 0 else {
            let error = errno
            close(fd)
            throw HMXError(code: .resourceExhausted, message: "cannot size or seal domain memory: errno \(error)")
        }
        guard let mapping = mmap(nil, rounded, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), mapping != MAP_FAILED else {
            let error = errno
            close(fd)
            throw HMXError(code: .resourceExhausted, message: "cannot map domain memory: errno \(error)")
        }
        self.base = mapping
        self.size = rounded
        self.fileDescriptor = fd
    }

    /// Maps memory received from a domain process, after checking that it is a sealed
    /// memfd of exactly `expectedSize` bytes. Takes ownership of `fd`.
    public init(adopting fd: Int32, expectedSize: Int) throws {
        var status = stat()
        guard chmx_memfd_is_sealed(fd) == 1 else {
            close(fd)
            throw HMXError(code: .attachRefused, message: "domain memory is not a memfd sealed against shrink and grow")
        }
        guard fstat(fd, &status) == 0, Int(status.st_size) == expectedSize, expectedSize % ArgoABI.pageSize == 0,
            expectedSize >= 2 * ArgoABI.pageSize
        else {
            close(fd)
            throw HMXError(code: .attachRefused, message: "domain memory size does not match the announced size")
        }
        guard let mapping = mmap(nil, expectedSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), mapping != MAP_FAILED
        else {
            close(fd)
            throw HMXError(code: .attachRefused, message: "cannot map domain memory: errno \(errno)")
        }
        self.base = mapping
        self.size = expectedSize
        self.fileDescriptor = fd
    }

    deinit {
        munmap(self.base, self.size)
        close(self.fileDescriptor)
    }

    /// Number of 4 KiB frames.
    public var pageCount: Int { self.size / ArgoABI.pageSize }

    /// The local pointer for `count` bytes at guest address `address`, or `nil` if any
    /// of them is outside valid guest memory (an EFAULT). A zero count is always valid.
    @inlinable
    public func pointer(guestAddress address: UInt64, count: Int) -> UnsafeMutableRawPointer? {
        if count == 0 { return self.base }
        guard address >= UInt64(ArgoABI.pageSize), count > 0,
            address <= UInt64(self.size), UInt64(count) <= UInt64(self.size) - address
        else { return nil }
        return self.base + Int(address)
    }

    /// The local pointer to frame `gfn`, or `nil` if it is not ordinary guest RAM.
    @inlinable
    public func page(gfn: UInt64) -> UnsafeMutableRawPointer? {
        guard gfn >= 1, gfn < UInt64(self.pageCount) else { return nil }
        return self.base + Int(gfn) * ArgoABI.pageSize
    }
}
