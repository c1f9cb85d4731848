// SPDX-License-Identifier: Apache-2.0
import CXenArgo
import HMXCore

/// Owns the C handles to libxencall / libxenforeignmemory (`cxa_hypervisor`).
///
/// Not thread-safe by itself: ``XenLink`` only uses it on its event loop (and the
/// probe uses its own instance on its own thread).
final class XenHypervisor {
    private let handle: OpaquePointer

    /// Opens privcmd through libxencall.
    /// - Throws: ``XenOpenError`` with the errno and libxencall's message.
    init() throws(XenOpenError) {
        var handle: OpaquePointer?
        var message = [CChar](repeating: 0, count: 256)
        let rc = cxa_open(&handle, &message, message.count)
        guard rc == 0, let handle else {
            throw XenOpenError(
                errno: -rc,
                message: String(decoding: message.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            )
        }
        self.handle = handle
    }

    deinit {
        cxa_close(self.handle)
    }

    var guestType: String { String(cString: cxa_guest_type(self.handle)) }

    var frameMethod: XenFrameMethod {
        cxa_frame_method_of(self.handle) == CXA_FRAMES_PAGEMAP ? .pseudoPhysicalPagemap : .machineFramesReservation
    }

    /// `argo_op`: the result, or a negative errno.
    func argoOp(_ command: UInt32, _ arg1: UInt64, _ arg2: UInt64, _ arg3: UInt64, _ arg4: UInt64) -> Int64 {
        Int64(cxa_argo_op(self.handle, command, arg1, arg2, arg3, arg4))
    }

    /// `argo_op` with arguments laid out by ``ArgoArguments``.
    func argoOp(_ call: ArgoArguments.Hypercall) -> Int64 {
        self.argoOp(call.command, call.arg1, call.arg2, call.arg3, call.arg4)
    }

    /// The pages this domain holds (XENMEM_current_reservation), or a negative errno.
    func currentReservation() -> Int {
        cxa_current_reservation(self.handle)
    }

    /// Zeroed hypercall-safe pages, or nil.
    func allocateBuffer(pages: Int) -> UnsafeMutableRawPointer? {
        cxa_buffer_alloc(self.handle, pages)
    }

    func freeBuffer(_ pointer: UnsafeMutableRawPointer, pages: Int) {
        cxa_buffer_free(self.handle, pointer, pages)
    }

    /// Frames that never move, mapped contiguously and zeroed.
    func allocateFrames(pages: Int) -> Result<XenFrames, XenErrnoError> {
        var mapping: UnsafeMutableRawPointer?
        var frames = [UInt64](repeating: 0, count: pages)
        let rc = cxa_frames_alloc(self.handle, pages, &mapping, &frames)
        guard rc == 0, let mapping else { return .failure(XenErrnoError(errno: ArgoErrno(rawValue: -rc))) }
        return .success(XenFrames(mapping: mapping, frames: frames))
    }

    /// Unmaps and returns frames; only once no ring uses them.
    @discardableResult
    func freeFrames(_ frames: XenFrames) -> Int32 {
        cxa_frames_free(self.handle, frames.mapping, frames.frames.count, frames.frames)
    }
}

/// How this guest obtains ring frames.
public enum XenFrameMethod: Sendable, CustomStringConvertible {
    /// PV: `XENMEM_increase_reservation` + `IOCTL_PRIVCMD_MMAPBATCH_V2` on DOMID_SELF.
    case machineFramesReservation
    /// HVM/PVH: `/dev/xen/hypercall` pages, frame numbers from `/proc/self/pagemap`.
    case pseudoPhysicalPagemap

    public var description: String {
        switch self {
        case .machineFramesReservation: "increase_reservation + MMAPBATCH_V2(DOMID_SELF)"
        case .pseudoPhysicalPagemap: "hypercall pages + /proc/self/pagemap"
        }
    }
}

/// Ring frames: a local mapping and the frame numbers Xen wants.
struct XenFrames {
    var mapping: UnsafeMutableRawPointer
    var frames: [UInt64]
}

/// A failed Xen library call's errno.
struct XenErrnoError: Error {
    var errno: ArgoErrno
}

/// Opening privcmd failed.
struct XenOpenError: Error {
    var errno: Int32
    var message: String
}
