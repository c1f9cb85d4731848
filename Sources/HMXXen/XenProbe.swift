// SPDX-License-Identifier: Apache-2.0
import CXenArgo
import HMXCore

#if canImport(Glibc)
import Glibc
#endif

/// Diagnoses whether this process can use Argo (ARGO.md §1.1, §5.1).
public enum XenProbe {
    /// The verdict, most fundamental problem first.
    public enum Status: Hashable, Sendable {
        /// Argo answered a NULL notify: usable.
        case usable
        /// Not a Xen guest (no `/sys/hypervisor/type` = xen, no privcmd).
        case notOnXen
        /// `/dev/xen/privcmd` (or `/dev/xen/hypercall`) is missing or cannot be opened.
        case privcmdUnavailable
        /// privcmd refuses hypercalls (EPERM): a domU kernel with the XSA-482
        /// restriction and without `xen_privcmd.unrestricted=1`, or an XSM policy.
        case privcmdRestricted
        /// Hypercall 39 is absent (ENOSYS): Xen built without CONFIG_ARGO.
        case argoAbsent
        /// Built in but disabled (EOPNOTSUPP): boot Xen with `argo=1`.
        case argoDisabled
        /// This domain may not use Argo (EACCES: XSM/Flask; ENODEV: no Argo state).
        case notPermitted
        /// Any other failure.
        case failed
    }

    public struct Result: Sendable, CustomStringConvertible {
        public var status: Status
        /// The errno behind a failure, if any.
        public var errno: ArgoErrno?
        /// One sentence: what is wrong and what to do.
        public var summary: String
        /// Facts gathered on the way ("guest type", "domid", ...), in order.
        public var facts: [(String, String)]
        /// This domain's id, when it could be learnt.
        public var localDomain: DomainID?

        public var description: String {
            var lines = [
                "status: \(self.status)" + (self.errno.map { " (\($0.name))" } ?? ""), "summary: \(self.summary)",
            ]
            for (name, value) in self.facts { lines.append("\(name): \(value)") }
            return lines.joined(separator: "\n")
        }
    }

    static func run() -> Result {
        var facts: [(String, String)] = []
        let onXen = cxa_running_on_xen() != 0
        facts.append(("running on Xen", onXen ? "yes" : "no"))
        let control = cxa_is_control_domain() != 0
        facts.append(("control domain", control ? "yes" : "no"))
        let unrestricted = cxa_privcmd_unrestricted()
        facts.append(("xen_privcmd.unrestricted", unrestricted < 0 ? "unknown" : (unrestricted == 1 ? "Y" : "N")))
        let privcmdExists = access("/dev/xen/privcmd", F_OK) == 0
        if !onXen && !privcmdExists {
            return Result(
                status: .notOnXen,
                errno: nil,
                summary: "not running on Xen (no /sys/hypervisor/type = xen, no /dev/xen/privcmd)",
                facts: facts
            )
        }
        let hypervisor: XenHypervisor
        do {
            hypervisor = try XenHypervisor()
        } catch {
            let errno = ArgoErrno(rawValue: error.errno)
            let hint =
                switch errno.rawValue {
                case ENOENT: "load xen-privcmd (modprobe xen-privcmd) and mount devtmpfs"
                case EACCES: "run as root (privcmd is root-only)"
                default: "check /dev/xen/privcmd and /dev/xen/hypercall"
                }
            return Result(
                status: .privcmdUnavailable,
                errno: errno,
                summary: "cannot open privcmd: \(error.message.isEmpty ? errno.name : error.message); \(hint)",
                facts: facts
            )
        }
        facts.append(("guest type", hypervisor.guestType))
        facts.append(("ring frames", hypervisor.frameMethod.description))
        let rc = hypervisor.argoOp(ArgoABI.Op.notify, 0, 0, 0, 0)
        facts.append(
            ("argo notify(NULL)", rc == 0 ? "0" : "-\(ArgoErrno(rawValue: Int32(truncatingIfNeeded: -rc)).name)")
        )
        var domain: DomainID?
        let domid = cxa_local_domid()
        if domid >= 0 {
            domain = DomainID(UInt16(domid))
            facts.append(("domid", String(domid)))
        } else {
            facts.append(("domid", "unknown (xenstore: \(ArgoErrno(rawValue: -domid).name))"))
        }
        if rc == 0 {
            return Result(status: .usable, errno: nil, summary: "Argo is usable", facts: facts, localDomain: domain)
        }
        let errno = ArgoErrno(rawValue: Int32(truncatingIfNeeded: -rc))
        let (status, summary): (Status, String) =
            switch errno {
            case .ENOSYS: (.argoAbsent, "Argo is not built into this hypervisor (rebuild Xen with CONFIG_ARGO=y)")
            case .EOPNOTSUPP: (.argoDisabled, "Argo is built in but disabled: add argo=1 to Xen's command line")
            case .EACCES: (.notPermitted, "Argo is denied to this domain by the XSM (Flask) policy")
            case .ENODEV: (.notPermitted, "this domain has no Argo state (Argo was refused at domain creation)")
            case .EPERM where !control && unrestricted != 1:
                (
                    .privcmdRestricted,
                    "privcmd blocks hypercalls in this domU: boot its kernel with xen_privcmd.unrestricted=1 (or load xen-privcmd with unrestricted=1)"
                )
            case .EPERM: (.privcmdRestricted, "hypercalls refused with EPERM (privcmd restriction or XSM policy)")
            default: (.failed, "Argo notify failed: \(errno.name) (\(errno.meaning))")
            }
        return Result(status: status, errno: errno, summary: summary, facts: facts, localDomain: domain)
    }
}
