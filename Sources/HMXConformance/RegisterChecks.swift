// SPDX-License-Identifier: Apache-2.0
import HMXCore

/// register_ring (ARGO.md §1.5, `register_ring` and `do_argo_op` in argo.c).
enum RegisterChecks {
    static let all: [ConformanceSuite.Check] = [
        .init("probe: NULL notify succeeds when Argo is usable") { context in
            try expectSuccess(try await context.primary.call(ArgoABI.Op.notify), "notify(NULL)")
        },
        // Runs before any check that re-registers a ring: Xen 4.17 counts every
        // successful register_ring toward the 128, in-place re-registration of an
        // existing ring included, and unregister_ring gives back one (xen/common/argo.c,
        // register_ring: `currd->argo->ring_count++` after both paths). On real Xen the
        // count lasts as long as the domain, so this check sees the full 128 only if it
        // comes first.
        .init("register: 128 rings per domain, the next is ENOSPC") { context in
            let raw = context.primary
            let me = raw.domain.rawValue
            var registered = 0
            var last: Int64 = 0
            let base = freshPort()
            while registered < 130 {
                last = try await raw.register(port: base &+ UInt32(registered), partner: me, length: 48).result
                if last != 0 { break }
                registered += 1
            }
            try expect(last, .ENOSPC, "ring number \(registered + 1)")
            try require(registered == ArgoABI.maximumRingsPerDomain, "ENOSPC after \(registered) rings, expected 128")
            try expectSuccess(try await raw.unregister(port: base, partner: me), "unregister one")
            try expectSuccess(try await raw.register(port: base, partner: me, length: 48).result, "register again")
        },
        .init("unknown operation is EOPNOTSUPP") { context in
            try expect(try await context.primary.call(99), .EOPNOTSUPP, "argo_op(99)")
        },
        .init("arg3 or arg4 above 32 bits is EINVAL") { context in
            try expect(
                try await context.primary.call(ArgoABI.Op.notify, 0, 0, 1 << 32, 0),
                .EINVAL,
                "notify with arg3 = 2^32"
            )
            try expect(
                try await context.primary.call(ArgoABI.Op.sendv, 0, 0, 0, 1 << 32),
                .EINVAL,
                "sendv with arg4 = 2^32"
            )
        },
        .init("register: ring lengths that Xen refuses are EINVAL") { context in
            let raw = context.primary
            let me = raw.domain.rawValue
            try expect(
                try await raw.register(port: freshPort(), partner: me, length: 32).result,
                .EINVAL,
                "length 32 (< 48)"
            )
            try expect(try await raw.register(port: freshPort(), partner: me, length: 40).result, .EINVAL, "length 40")
            try expect(
                try await raw.register(port: freshPort(), partner: me, length: 4008).result,
                .EINVAL,
                "length 4008 (not a multiple of 16)"
            )
            try expect(
                try await raw.register(port: freshPort(), partner: me, length: 4032, npages: 2).result,
                .EINVAL,
                "npages 2 for a one-page ring"
            )
            try expect(
                try await raw.register(port: freshPort(), partner: me, length: 4032, pad: 1).result,
                .EINVAL,
                "pad != 0"
            )
            try expect(
                try await raw.register(port: freshPort(), partner: me, length: 4032, flags: 2).result,
                .EINVAL,
                "undefined flag"
            )
            try expect(try await raw.call(ArgoABI.Op.registerRing, 0, 0, 4097, 0), .EINVAL, "npages 4097")
        },
        .init("register: the smallest ring (48) and a page-filling ring (4032) are accepted") { context in
            let raw = context.primary
            try expectSuccess(
                try await raw.register(port: freshPort(), partner: raw.domain.rawValue, length: 48).result,
                "length 48"
            )
            try expectSuccess(
                try await raw.register(port: freshPort(), partner: raw.domain.rawValue, length: 4032).result,
                "length 4032"
            )
        },
        .init("register: unreadable arguments are EFAULT") { context in
            let raw = context.primary
            let bad = raw.link.invalidGuestAddress
            let gfns = try await raw.scratch()
            try expect(
                try await raw.call(ArgoABI.Op.registerRing, bad, gfns.guestAddress, 1, 0),
                .EFAULT,
                "bad register_ring pointer"
            )
            let args = try await raw.scratch()
            ArgoRegisterRing(port: freshPort(), partner: raw.domain.rawValue, length: 4032).store(to: args.pointer)
            try expect(
                try await raw.call(ArgoABI.Op.registerRing, args.guestAddress, bad, 1, 0),
                .EFAULT,
                "bad gfn array pointer"
            )
        },
        .init("register: a frame that is not ordinary RAM is EINVAL") { context in
            let raw = context.primary
            let args = try await raw.scratch()
            ArgoRegisterRing(port: freshPort(), partner: raw.domain.rawValue, length: 4032).store(to: args.pointer)
            storeLE(args.pointer, 16, UInt64(0xF_FFFF_FFFF))
            try expect(
                try await raw.call(ArgoABI.Op.registerRing, args.guestAddress, args.guestAddress + 16, 1, 0),
                .EINVAL,
                "gfn 0xFFFFFFFFF"
            )
        },
        .init("register: a partner that does not exist is ESRCH") { context in
            let raw = context.primary
            try expect(
                try await raw.register(port: freshPort(), partner: context.world.absentDomain.rawValue, length: 4032)
                    .result,
                .ESRCH,
                "partner \(context.world.absentDomain)"
            )
        },
        .init("register: wildcard rings need mac-permissive (else EPERM)") { context in
            let result = try await context.primary.register(port: freshPort(), partner: ArgoABI.domidAny, length: 4032)
                .result
            if context.world.wildcardRingsAllowed {
                try expectSuccess(result, "wildcard ring with mac-permissive")
            } else {
                try expect(result, .EPERM, "wildcard ring without mac-permissive")
            }
        },
        .init("register: FAIL_EXIST and a changed length are EEXIST; same length re-registers") { context in
            let raw = context.primary
            let port = freshPort()
            let me = raw.domain.rawValue
            try expectSuccess(
                try await raw.register(port: port, partner: me, length: 4032).result,
                "first registration"
            )
            try expect(
                try await raw.register(port: port, partner: me, length: 4032, flags: ArgoABI.registerFlagFailExist)
                    .result,
                .EEXIST,
                "FAIL_EXIST on an existing ring"
            )
            try expect(
                try await raw.register(port: port, partner: me, length: 8128).result,
                .EEXIST,
                "a different length"
            )
            try expectSuccess(
                try await raw.register(port: port, partner: me, length: 4032).result,
                "re-registration, same length"
            )
        },
    ]
}

/// unregister_ring.
enum UnregisterChecks {
    static let all: [ConformanceSuite.Check] = [
        .init("unregister: an unknown ring is ENOENT; a registered one goes away") { context in
            let raw = context.primary
            let port = freshPort()
            let me = raw.domain.rawValue
            try expect(try await raw.unregister(port: port, partner: me), .ENOENT, "unknown ring")
            try expectSuccess(try await raw.register(port: port, partner: me, length: 4032).result, "register")
            try expectSuccess(try await raw.unregister(port: port, partner: me), "unregister")
            try expect(try await raw.unregister(port: port, partner: me), .ENOENT, "unregister twice")
            try expect(
                try await raw.sendv(source: raw.self_(), destination: raw.self_(port), payloads: [[1]]),
                .ECONNREFUSED,
                "send to the unregistered ring"
            )
        },
        .init("unregister: bad arguments are EINVAL or EFAULT") { context in
            let raw = context.primary
            let args = try await raw.scratch()
            ArgoUnregisterRing(port: 1, partner: raw.domain.rawValue, pad: 1).store(to: args.pointer)
            try expect(try await raw.call(ArgoABI.Op.unregisterRing, args.guestAddress), .EINVAL, "pad != 0")
            ArgoUnregisterRing(port: 1, partner: raw.domain.rawValue).store(to: args.pointer)
            try expect(
                try await raw.call(ArgoABI.Op.unregisterRing, args.guestAddress, args.guestAddress),
                .EINVAL,
                "arg2 != NULL"
            )
            try expect(try await raw.call(ArgoABI.Op.unregisterRing, args.guestAddress, 0, 1), .EINVAL, "arg3 != 0")
            try expect(try await raw.call(ArgoABI.Op.unregisterRing, args.guestAddress, 0, 0, 1), .EINVAL, "arg4 != 0")
            try expect(
                try await raw.call(ArgoABI.Op.unregisterRing, raw.link.invalidGuestAddress),
                .EFAULT,
                "bad pointer"
            )
        },
    ]
}
