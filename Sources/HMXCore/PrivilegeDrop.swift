// SPDX-License-Identifier: Apache-2.0
import CHMXShims

#if canImport(Glibc)
import Glibc
#endif

/// Gives up root once a daemon holds what needed it (the gateway: listeners, possibly
/// on privileged ports; the hypervisor link: the emulator's socket, or Xen's privcmd and
/// event-channel devices; the metrics listener; the audit file. The emulator: its
/// domains' sockets, given to their users): supplementary groups
/// cleared, then the group, then the user, in every thread of the process (glibc
/// applies these calls to all threads). Changing the user from root to another one
/// clears every capability (the kernel empties the permitted and effective sets; no
/// `keep-caps`). glibc changes a thread's ids by signalling it, so the command keeps
/// its first thread an ordinary waiting one (see `blockUntilDone`): parked by Swift's
/// asynchronous `main` with every signal blocked, it would keep root's ids.
public enum PrivilegeDrop {
    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    /// The ids for `user` and `group` (the group defaults to the user's).
    public static func resolve(
        user: String?,
        group: String?,
        file: String
    ) throws(Failure) -> (uid: uid_t?, gid: gid_t?) {
        var uid: uid_t?
        var gid: gid_t?
        if let user {
            guard let entry = getpwnam(user) else {
                throw Failure(description: "\(file): user: no such user '\(user)'")
            }
            uid = entry.pointee.pw_uid
            gid = entry.pointee.pw_gid
        }
        if let group {
            guard let entry = getgrnam(group) else {
                throw Failure(description: "\(file): group: no such group '\(group)'")
            }
            gid = entry.pointee.gr_gid
        }
        return (uid, gid)
    }

    public static func drop(uid: uid_t?, gid: gid_t?) throws(Failure) {
        func check(_ result: CInt, _ what: String) throws(Failure) {
            guard result == 0 else { throw Failure(description: "\(what): \(String(cString: strerror(errno)))") }
        }
        if let gid {
            if getuid() == 0 { try check(setgroups(0, nil), "setgroups") }
            try check(chmx_setresgid(gid), "setresgid(\(gid))")
        }
        if let uid {
            try check(chmx_setresuid(uid), "setresuid(\(uid))")
            // Root must not come back (setuid(0) fails once the saved id is gone too).
            if uid != 0, setuid(0) == 0 { throw Failure(description: "still able to become root after dropping") }
        }
    }
}
