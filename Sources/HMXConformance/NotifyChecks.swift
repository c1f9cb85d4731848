// SPDX-License-Identifier: Apache-2.0
import HMXCore

/// notify (ARGO.md §1.5, §2.4) and the ring lookup order (§2.5).
enum NotifyChecks {
    static let all: [ConformanceSuite.Check] = [
        .init("notify: more than 256 entries is EACCES; bad arguments are EINVAL or EFAULT") { context in
            let raw = context.primary
            try expect(try await raw.notify([], count: 257).result, .EACCES, "nent 257")
            try expect(try await raw.call(ArgoABI.Op.notify, 0, 1), .EINVAL, "arg2 != NULL")
            try expect(try await raw.call(ArgoABI.Op.notify, 0, 0, 1), .EINVAL, "arg3 != 0")
            try expect(try await raw.call(ArgoABI.Op.notify, 0, 0, 0, 1), .EINVAL, "arg4 != 0")
            try expect(try await raw.call(ArgoABI.Op.notify, raw.link.invalidGuestAddress), .EFAULT, "bad pointer")
        },
        .init("notify: flags and max_message_size describe a ring") { context in
            let raw = context.primary
            let port = freshPort()
            try expectSuccess(
                try await raw.register(port: port, partner: raw.domain.rawValue, length: 256).result,
                "register"
            )
            let (result, entries) = try await raw.notify([
                ArgoRingDataEntry(ring: raw.self_(port), spaceRequired: 100),
                ArgoRingDataEntry(ring: raw.self_(port), spaceRequired: 225),
                ArgoRingDataEntry(ring: raw.self_(freshPort()), spaceRequired: 1),
                ArgoRingDataEntry(
                    ring: ArgoAddr(port: port, domain: context.world.absentDomain.rawValue),
                    spaceRequired: 1
                ),
            ])
            try expectSuccess(result, "notify")
            let expected: ArgoABI.RingFlags = [.exists, .empty, .sufficient]
            try require(
                ArgoABI.RingFlags(rawValue: entries[0].flags) == expected,
                "empty ring flags \(ArgoABI.RingFlags(rawValue: entries[0].flags))"
            )
            try require(entries[0].maxMessageSize == 224, "max_message_size \(entries[0].maxMessageSize), expected 224")
            try require(
                ArgoABI.RingFlags(rawValue: entries[1].flags) == [.exists, .empty, .messageTooLarge],
                "space_required above the maximum: \(ArgoABI.RingFlags(rawValue: entries[1].flags))"
            )
            try require(entries[2].flags == 0, "no ring at that port: flags \(entries[2].flags)")
            try require(entries[3].flags == 0, "absent domain: flags \(entries[3].flags)")
        },
        .init("notify: too little space queues a wake-up that the receiver's notify delivers") { context in
            let raw = context.primary
            let port = freshPort()
            let (result, memory) = try await raw.register(port: port, partner: raw.domain.rawValue, length: 256)
            try expectSuccess(result, "register")
            try expectSuccess(
                try await raw.sendv(
                    source: raw.self_(),
                    destination: raw.self_(port),
                    payloads: [Array(repeating: 1, count: 200)]
                ),
                "fill",
                equals: 200
            )
            _ = await raw.events.quiet(beyond: -1, for: 100)
            let (queried, entries) = try await raw.notify([ArgoRingDataEntry(ring: raw.self_(port), spaceRequired: 100)]
            )
            try expectSuccess(queried, "notify query")
            try require(
                ArgoABI.RingFlags(rawValue: entries[0].flags) == [.exists],
                "flags \(ArgoABI.RingFlags(rawValue: entries[0].flags))"
            )
            let mark = raw.events.count
            try require(await raw.events.quiet(beyond: mark), "woken before the receiver made room")
            var ring = RawRing(memory, length: 256)
            _ = try ring.next()
            try expectSuccess(try await raw.call(ArgoABI.Op.notify), "receiver's notify")
            try require(await raw.events.wait(beyond: mark), "no wake-up")
        },
        .init("notify: SUFFICIENT cancels a queued wake-up") { context in
            let raw = context.primary
            let port = freshPort()
            let (result, memory) = try await raw.register(port: port, partner: raw.domain.rawValue, length: 256)
            try expectSuccess(result, "register")
            try expectSuccess(
                try await raw.sendv(
                    source: raw.self_(),
                    destination: raw.self_(port),
                    payloads: [Array(repeating: 1, count: 150)]
                ),
                "fill",
                equals: 150
            )
            _ = await raw.events.quiet(beyond: -1, for: 100)
            let (_, queued) = try await raw.notify([ArgoRingDataEntry(ring: raw.self_(port), spaceRequired: 100)])
            try require(
                !ArgoABI.RingFlags(rawValue: queued[0].flags).contains(.sufficient),
                "100 bytes should not fit yet"
            )
            let (_, entries) = try await raw.notify([ArgoRingDataEntry(ring: raw.self_(port), spaceRequired: 10)])
            try require(ArgoABI.RingFlags(rawValue: entries[0].flags).contains(.sufficient), "10 bytes should fit")
            var ring = RawRing(memory, length: 256)
            _ = try ring.next()
            let mark = raw.events.count
            try expectSuccess(try await raw.call(ArgoABI.Op.notify), "receiver's notify")
            try require(await raw.events.quiet(beyond: mark), "woken although the wait was cancelled")
        },
        .init("wildcard: SHARED flag, and a partner ring is found before the wildcard ring") { context in
            guard context.world.wildcardRingsAllowed else { return }
            let raw = context.primary
            let port = freshPort()
            let (wildcardResult, wildcardMemory) = try await raw.register(
                port: port,
                partner: ArgoABI.domidAny,
                length: 4032
            )
            try expectSuccess(wildcardResult, "wildcard ring")
            let (_, shared) = try await raw.notify([ArgoRingDataEntry(ring: raw.self_(port), spaceRequired: 0)])
            try require(ArgoABI.RingFlags(rawValue: shared[0].flags).contains(.shared), "SHARED missing")
            let (partnerResult, partnerMemory) = try await raw.register(
                port: port,
                partner: raw.domain.rawValue,
                length: 4032
            )
            try expectSuccess(partnerResult, "partner ring on the same port")
            try expectSuccess(
                try await raw.sendv(source: raw.self_(), destination: raw.self_(port), payloads: [[1]]),
                "send",
                equals: 1
            )
            var partnerRing = RawRing(partnerMemory, length: 4032)
            var wildcardRing = RawRing(wildcardMemory, length: 4032)
            try require(try partnerRing.next()?.payload == [1], "the partner ring should receive")
            try require(try wildcardRing.next() == nil, "the wildcard ring should not receive")
            try expectSuccess(
                try await raw.unregister(port: port, partner: raw.domain.rawValue),
                "unregister the partner ring"
            )
            try expectSuccess(
                try await raw.sendv(source: raw.self_(), destination: raw.self_(port), payloads: [[2]]),
                "send",
                equals: 1
            )
            try require(try wildcardRing.next()?.payload == [2], "the wildcard ring should now receive")
        },
    ]
}

/// Checks that need two domains.
enum TwoDomainChecks {
    static let all: [ConformanceSuite.Check] =
        [
            .init(
                "two domains: the receiver sees the sender's real domain id, whatever the payload claims",
                needsPeer: true
            ) { context in
                let receiver = context.primary
                let sender = try context.requirePeer
                let port = freshPort()
                let (result, memory) = try await receiver.register(
                    port: port,
                    partner: sender.domain.rawValue,
                    length: 4032
                )
                try expectSuccess(result, "register a ring for the peer")
                // A payload that looks like a message header claiming to come from the receiver.
                var fake = [UInt8](repeating: 0, count: 16)
                fake.withUnsafeMutableBytes { raw in
                    ArgoMessageHeader(length: 16, source: receiver.self_(1), messageType: 0).store(to: raw.baseAddress!)
                }
                try expectSuccess(
                    try await sender.sendv(
                        source: ArgoAddr(port: 5, domain: ArgoABI.domidAny),
                        destination: receiver.self_(port),
                        payloads: [fake]
                    ),
                    "send",
                    equals: 16
                )
                var ring = RawRing(memory, length: 4032)
                guard let message = try ring.next() else { throw ConformanceSuite.CheckFailure("nothing arrived") }
                try require(
                    message.header.source.domain == sender.domain.rawValue,
                    "stamped source \(message.header.source.domain)"
                )
                try require(message.payload == fake, "payload was changed")
            },
            .init("two domains: a sender cannot send as the other domain (EPERM)", needsPeer: true) { context in
                let receiver = context.primary
                let sender = try context.requirePeer
                let port = freshPort()
                try expectSuccess(
                    try await receiver.register(port: port, partner: sender.domain.rawValue, length: 4032).result,
                    "register"
                )
                try expect(
                    try await sender.sendv(
                        source: receiver.self_(),
                        destination: receiver.self_(port),
                        payloads: [[1]]
                    ),
                    .EPERM,
                    "spoofed source"
                )
            },
            .init("two domains: a partner ring refuses every other sender (ECONNREFUSED)", needsPeer: true) { context in
                let receiver = context.primary
                let sender = try context.requirePeer
                let port = freshPort()
                try expectSuccess(
                    try await receiver.register(port: port, partner: receiver.domain.rawValue, length: 4032).result,
                    "register"
                )
                try expect(
                    try await sender.sendv(source: sender.self_(), destination: receiver.self_(port), payloads: [[1]]),
                    .ECONNREFUSED,
                    "send to a ring reserved for another partner"
                )
            },
            .init("two domains: the receiver's notify wakes the other domain's blocked sender", needsPeer: true) {
                context in
                let receiver = context.primary
                let sender = try context.requirePeer
                let port = freshPort()
                let (result, memory) = try await receiver.register(
                    port: port,
                    partner: sender.domain.rawValue,
                    length: 256
                )
                try expectSuccess(result, "register")
                try await blockedSenderIsWoken(sender, destination: receiver.self_(port)) {
                    var ring = RawRing(memory, length: 256)
                    _ = try ring.next()
                    try expectSuccess(try await receiver.call(ArgoABI.Op.notify), "receiver's notify")
                }
            },
        ] + OtherDomainReceives.all
}

/// The blocked-sender protocol, either way round: `sender` fills the 256-byte ring at
/// `destination` (224 bytes) and finds it full (EAGAIN); it is not woken until
/// `makeRoom` (the receiver takes the first message and notifies), then it is, and its
/// retry fits.
func blockedSenderIsWoken(
    _ sender: any ConformancePeer,
    destination: ArgoAddr,
    makeRoom: () async throws -> Void
) async throws {
    try expectSuccess(
        try await sender.sendv(
            source: sender.self_(),
            destination: destination,
            payloads: [Array(repeating: 3, count: 224)]
        ),
        "fill",
        equals: 224
    )
    try expect(
        try await sender.sendv(source: sender.self_(), destination: destination, payloads: [[4]]),
        .EAGAIN,
        "full"
    )
    let mark = try await sender.eventCount()
    try require(try await sender.isQuiet(beyond: mark), "sender woken too early")
    try await makeRoom()
    try require(try await sender.waitForEvent(beyond: mark), "sender not woken")
    try expectSuccess(
        try await sender.sendv(source: sender.self_(), destination: destination, payloads: [[4]]),
        "retry",
        equals: 1
    )
}

/// The two-domain checks the other way round: the second domain receives, this one
/// sends (on Xen: the domU's rings, dom0's sends).
enum OtherDomainReceives {
    static let all: [ConformanceSuite.Check] = [
        .init("two domains: the other domain receiving: it sees this domain's real id as the source", needsPeer: true) {
            context in
            let sender = context.primary
            let receiver = try context.requirePeer
            let port = freshPort()
            try expectSuccess(
                try await context.registerPeerRing(port: port, partner: sender.domain.rawValue, length: 4032),
                "register a ring in the other domain"
            )
            try expectSuccess(
                try await sender.sendv(
                    source: ArgoAddr(port: 5, domain: ArgoABI.domidAny),
                    destination: receiver.self_(port),
                    payloads: [[1, 2, 3]]
                ),
                "send",
                equals: 3
            )
            guard let message = try await receiver.receive(port: port, partner: sender.domain.rawValue) else {
                throw ConformanceSuite.CheckFailure("nothing arrived")
            }
            try require(
                message.source == ArgoAddr(port: 5, domain: sender.domain.rawValue),
                "stamped source \(message.source.domain) port \(message.source.port)"
            )
            try require(message.payload == [1, 2, 3], "payload \(message.payload)")
            try require(
                try await receiver.receive(port: port, partner: sender.domain.rawValue) == nil,
                "a second message arrived"
            )
        },
        .init("two domains: the other domain receiving: this domain cannot send as it (EPERM)", needsPeer: true) {
            context in
            let sender = context.primary
            let receiver = try context.requirePeer
            let port = freshPort()
            try expectSuccess(
                try await context.registerPeerRing(port: port, partner: sender.domain.rawValue, length: 4032),
                "register"
            )
            try expect(
                try await sender.sendv(source: receiver.self_(), destination: receiver.self_(port), payloads: [[1]]),
                .EPERM,
                "spoofed source"
            )
        },
        .init(
            "two domains: the other domain receiving: its ring for another partner refuses this domain (ECONNREFUSED)",
            needsPeer: true
        ) { context in
            let sender = context.primary
            let receiver = try context.requirePeer
            let port = freshPort()
            try expectSuccess(
                try await context.registerPeerRing(port: port, partner: receiver.domain.rawValue, length: 4032),
                "register"
            )
            try expect(
                try await sender.sendv(source: sender.self_(), destination: receiver.self_(port), payloads: [[1]]),
                .ECONNREFUSED,
                "send to a ring reserved for another partner"
            )
        },
        .init("two domains: the other domain receiving: its notify wakes this domain's blocked sender", needsPeer: true)
        {
            context in
            let sender = context.primary
            let receiver = try context.requirePeer
            let port = freshPort()
            try expectSuccess(
                try await context.registerPeerRing(port: port, partner: sender.domain.rawValue, length: 256),
                "register"
            )
            try await blockedSenderIsWoken(sender, destination: receiver.self_(port)) {
                try require(
                    try await receiver.receive(port: port, partner: sender.domain.rawValue)?.payload.count == 224,
                    "the other domain did not receive the first message"
                )
                try expectSuccess(try await receiver.nullNotify(), "the other domain's notify")
            }
        },
    ]
}

/// What a partner ring becomes when its partner domain is destroyed (ARGO.md §2.5, §2.6).
enum PartnerDestroyCheck {
    static let check = ConformanceSuite.Check(
        "two domains: a ring for a partner that is destroyed goes with it (unregister is ENOENT)",
        destroysPeer: true
    ) { context in
        let owner = context.primary
        let peer = try context.requirePeer
        let partner = peer.domain.rawValue
        let port = freshPort()
        try expectSuccess(
            try await owner.register(port: port, partner: partner, length: 4032).result,
            "register a ring for the other domain"
        )
        try expectSuccess(
            try await peer.sendv(source: peer.self_(), destination: owner.self_(port), payloads: [[7]]),
            "the other domain sends",
            equals: 1
        )
        try await context.world.destroyPeer!()
        // Gone once a send to it is ESRCH (bounded: a domain takes a moment to die).
        let esrch = -Int64(ArgoErrno.ESRCH.rawValue)
        let clock = ContinuousClock()
        let deadline = clock.now + .seconds(120)
        var last: Int64 = 0
        while true {
            last = try await owner.sendv(source: owner.self_(), destination: peer.self_(port), payloads: [[1]])
            if last == esrch || clock.now >= deadline { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        try require(last == esrch, "a send to the destroyed domain: expected ESRCH, got \(describe(last))")
        // The ring is gone too (the owner is not told): unregistering it finds nothing.
        // (Registering it again is ESRCH: a partner must exist.)
        try expect(try await owner.unregister(port: port, partner: partner), .ENOENT, "unregister the ring")
    }
}
