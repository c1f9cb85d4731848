// SPDX-License-Identifier: Apache-2.0
import NIOCore

/// Raw access to the Argo hypercall for conformance testing: arguments are crafted
/// byte by byte in memory that the hypervisor can read (guest memory for the
/// emulator, hypercall-safe buffers on Xen), so that every error path of ARGO.md
/// §1.5 can be exercised identically on both backends.
public protocol HMXRawHypercalls: HMXLink {
    /// Issues `argo_op(command, arg1, arg2, arg3, arg4)`; returns its raw result
    /// (negative errno on failure).
    func rawHypercall(command: UInt32, arg1: UInt64, arg2: UInt64, arg3: UInt64, arg4: UInt64) -> EventLoopFuture<Int64>

    /// Allocates zeroed memory usable as hypercall arguments and as ring frames:
    /// `pages` whole 4 KiB pages, virtually contiguous for this process.
    /// - Returns: the guest address to pass to the hypervisor and the local pointer.
    func allocateScratch(pages: Int) -> EventLoopFuture<HMXScratch>

    /// Returns memory from ``allocateScratch(pages:)``. It must no longer be registered
    /// as a ring.
    func releaseScratch(_ scratch: HMXScratch)

    /// The frame numbers to pass to register_ring for the pages of `scratch`.
    func frameNumbers(of scratch: HMXScratch) -> [UInt64]

    /// A guest address that is certainly not readable by the hypervisor.
    var invalidGuestAddress: UInt64 { get }
}

/// Memory returned by ``HMXRawHypercalls/allocateScratch(pages:)``.
public struct HMXScratch: @unchecked Sendable {
    // @unchecked: a plain pointer into memory that lives as long as the link.
    public var guestAddress: UInt64
    public var pointer: UnsafeMutableRawPointer
    public var pages: Int

    public init(guestAddress: UInt64, pointer: UnsafeMutableRawPointer, pages: Int) {
        self.guestAddress = guestAddress
        self.pointer = pointer
        self.pages = pages
    }
}
