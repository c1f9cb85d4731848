// SPDX-License-Identifier: Apache-2.0

/// An errno value as returned (negated) by the Argo hypercall.
///
/// Xen's errno values equal Linux's for every code Argo returns
/// (`xen/include/public/errno.h`); tests check them against libxen-dev.
public struct ArgoErrno: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }

    public static let EPERM = ArgoErrno(rawValue: 1)
    public static let ENOENT = ArgoErrno(rawValue: 2)
    public static let ESRCH = ArgoErrno(rawValue: 3)
    public static let EAGAIN = ArgoErrno(rawValue: 11)
    public static let ENOMEM = ArgoErrno(rawValue: 12)
    public static let EACCES = ArgoErrno(rawValue: 13)
    public static let EFAULT = ArgoErrno(rawValue: 14)
    public static let EBUSY = ArgoErrno(rawValue: 16)
    public static let EEXIST = ArgoErrno(rawValue: 17)
    public static let ENODEV = ArgoErrno(rawValue: 19)
    public static let EINVAL = ArgoErrno(rawValue: 22)
    public static let ENOSPC = ArgoErrno(rawValue: 28)
    public static let ENOSYS = ArgoErrno(rawValue: 38)
    public static let EMSGSIZE = ArgoErrno(rawValue: 90)
    public static let EOPNOTSUPP = ArgoErrno(rawValue: 95)
    public static let ECONNREFUSED = ArgoErrno(rawValue: 111)

    public var name: String {
        switch self {
        case .EPERM: "EPERM"
        case .ENOENT: "ENOENT"
        case .ESRCH: "ESRCH"
        case .EAGAIN: "EAGAIN"
        case .ENOMEM: "ENOMEM"
        case .EACCES: "EACCES"
        case .EFAULT: "EFAULT"
        case .EBUSY: "EBUSY"
        case .EEXIST: "EEXIST"
        case .ENODEV: "ENODEV"
        case .EINVAL: "EINVAL"
        case .ENOSPC: "ENOSPC"
        case .ENOSYS: "ENOSYS"
        case .EMSGSIZE: "EMSGSIZE"
        case .EOPNOTSUPP: "EOPNOTSUPP"
        case .ECONNREFUSED: "ECONNREFUSED"
        default: "errno \(self.rawValue)"
        }
    }

    /// What the error means for an Argo caller, in words an operator understands.
    public var meaning: String {
        switch self {
        case .EPERM: "not permitted (forged source, wildcard ring without mac-permissive, or policy)"
        case .ENOENT: "no such ring"
        case .ESRCH: "destination domain does not exist (not running)"
        case .EAGAIN: "destination ring is full for now; a wake-up is queued"
        case .ENOMEM: "out of memory"
        case .EACCES: "denied by hypervisor policy"
        case .EFAULT: "bad guest address"
        case .EBUSY: "too many domains already waiting for space on that ring"
        case .EEXIST: "ring already registered"
        case .ENODEV: "Argo is not enabled for this domain"
        case .EINVAL: "invalid argument"
        case .ENOSPC: "too many rings (128 per domain)"
        case .ENOSYS: "Argo is not built into this hypervisor"
        case .EMSGSIZE: "message can never fit the destination ring"
        case .EOPNOTSUPP: "Argo is disabled (boot option argo=1 missing)"
        case .ECONNREFUSED: "no ring at that address (or the destination has no Argo state)"
        default: "unknown error"
        }
    }

    public var description: String { self.name }
}

/// An error from an HMX link: an Argo errno from the hypervisor, or a local failure
/// of the link itself (attach refused, link closed, protocol violation).
public struct HMXError: Error, Hashable, Sendable, CustomStringConvertible {
    /// A stable, opaque error code.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Wrapped: Hashable, Sendable {
            case argo
            case linkClosed
            case attachRefused
            case protocolViolation
            case resourceExhausted
            case unavailable
        }
        private var wrapped: Wrapped
        private init(_ wrapped: Wrapped) { self.wrapped = wrapped }

        /// The hypervisor returned an errno; see ``HMXError/errno``.
        public static let argo = Code(.argo)
        /// The link to the hypervisor is closed.
        public static let linkClosed = Code(.linkClosed)
        /// The hypervisor (emulator) refused to attach this process as a domain.
        public static let attachRefused = Code(.attachRefused)
        /// The other side of the link broke the link protocol.
        public static let protocolViolation = Code(.protocolViolation)
        /// A local bound was reached (queued requests, guest memory for rings).
        public static let resourceExhausted = Code(.resourceExhausted)
        /// The backend cannot be used here (e.g. Argo absent or disabled).
        public static let unavailable = Code(.unavailable)

        public var description: String { String(describing: self.wrapped) }
    }

    public var code: Code
    /// The Argo errno, when ``code`` is ``Code/argo``.
    public var errno: ArgoErrno?
    public var message: String

    public init(code: Code, errno: ArgoErrno? = nil, message: String) {
        self.code = code
        self.errno = errno
        self.message = message
    }

    /// `error` itself if it is an HMXError, otherwise one that describes it (a
    /// backend's future failed with something else, e.g. a closed channel).
    public init(wrapping error: any Error) {
        if let error = error as? HMXError {
            self = error
        } else {
            self.init(code: .linkClosed, message: "\(error)")
        }
    }

    /// An error carrying an Argo errno.
    public static func argo(_ errno: ArgoErrno, _ message: String = "") -> HMXError {
        HMXError(code: .argo, errno: errno, message: message.isEmpty ? errno.meaning : message)
    }

    public var description: String {
        if let errno = self.errno {
            return "\(errno.name): \(self.message)"
        }
        return "\(self.code): \(self.message)"
    }
}
