// SPDX-License-Identifier: Apache-2.0
import HMXCore
import HMXStream
import HMXTestSupport
import NIOCore
import NIOEmbedded

extension Simulation {
    /// Runs the seed: random steps with faults, then steps without faults until
    /// everything settles.
    /// - Returns: the violations found (empty: the run passed).
    func run() throws -> [String] {
        for _ in 0..<self.options.steps {
            try self.step(faults: self.options.faults)
            self.checkInvariants()
            if !self.violations.isEmpty { return self.violations }
        }
        try self.settle()
        self.checkInvariants()
        if self.violations.isEmpty { self.checkSettled() }
        return self.violations
    }

    /// Steps without faults, favouring progress, with time passing, until every
    /// application ended and no connection is left (at most a minute of virtual time).
    func settle() throws {
        for round in 0..<1200 {
            for _ in 0..<200 {
                guard try self.progressStep() else { break }
                self.checkInvariants()
                if !self.violations.isEmpty { return }
            }
            if self.isSettled { return }
            // Nothing left to do now: let time pass (keepalives, timeouts).
            self.loop.advanceTime(by: .milliseconds(round < 100 ? 20 : 100))
        }
    }

    var isSettled: Bool {
        self.gateways.allSatisfy { $0.driver.activeConnectionCount == 0 && $0.pendingDials.isEmpty }
            && self.allApps.allSatisfy(\.isDone)
            && self.gateways.allSatisfy { $0.link.pendingRequests == 0 && !$0.link.hasPendingEvent }
    }

    /// One step of the faultless phase: the first kind of progress that is possible.
    /// - Returns: false if nothing could progress.
    private func progressStep() throws -> Bool {
        self.loop.run()
        for gateway in self.gateways where gateway.link.pendingRequests > 0 {
            gateway.link.runNextRequest()
            return true
        }
        for gateway in self.gateways where gateway.link.hasPendingEvent {
            gateway.link.deliverEvent()
            return true
        }
        for gateway in self.gateways {
            if let id = gateway.pendingDials.first {
                self.completeDial(id, on: gateway, succeed: true)
                return true
            }
            for (id, app) in gateway.sortedApps {
                if self.appStep(id, app, on: gateway) { return true }
            }
            for app in gateway.detached where !app.pendingWrites.isEmpty || app.closeIfFinished() {
                _ = app.completeWrite()
                _ = app.closeIfFinished()
                return true
            }
        }
        self.loop.run()
        return false
    }

    /// Something an application can do now, done.
    private func appStep(_ id: ConnectionID, _ app: SimulatedApp, on gateway: SimulatedGateway) -> Bool {
        if let count = app.completeWrite() {
            gateway.driver.localWriteCompleted(id, count: count)
            return true
        }
        if app.isReadRequested, let bytes = app.read(maximum: self.random.int(1...65_536)) {
            app.isReadRequested = false
            gateway.driver.localRead(id, bytes)
            gateway.driver.localReadComplete(id)
            return true
        }
        if app.hasShutWrite, !app.isReadRequested, app.hasBytesToSend, self.random.chance(20) {
            // The application half-closed: NIO reads up to EOF (EPOLLRDHUP) whether or
            // not a read was asked for.
            while let bytes = app.read(maximum: 65_536) { gateway.driver.localRead(id, bytes) }
            gateway.driver.localReadComplete(id)
            return true
        }
        if !app.hasShutWrite, self.random.chance(30) || !app.isReadRequested, app.shutWrite() { return true }
        if app.inputClosedReported() {
            gateway.driver.localInputClosed(id)
            return true
        }
        if app.closeIfFinished() {
            gateway.driver.localClosed(id, error: false)
            return true
        }
        return false
    }

    private func completeDial(_ id: ConnectionID, on gateway: SimulatedGateway, succeed: Bool) {
        gateway.pendingDials.removeAll { $0 == id }
        guard gateway.driver.connection(id)?.phase == .dialing else { return }
        if succeed {
            let app = SimulatedApp(server: gateway.plans)
            gateway.apps[id] = app
            gateway.driver.attach(app, to: id)
            gateway.driver.dialSucceeded(id)
        } else {
            self.record("dial of \(id) on \(gateway.name) fails")
            gateway.driver.refuse(id, .targetRefused)
        }
    }

    /// One random step.
    func step(faults: Bool) throws {
        let roll = self.random.int(0...999)
        switch roll {
        case 0..<250:
            // A domain's next hypercall runs.
            let busy = self.gateways.filter { $0.link.pendingRequests > 0 }
            self.random.pick(busy)?.link.runNextRequest()
        case 250..<350:
            let waiting = self.gateways.filter { $0.link.hasPendingEvent }
            self.random.pick(waiting)?.link.deliverEvent()
        case 350..<480:
            self.loop.run()
        case 480..<530:
            self.loop.advanceTime(by: .milliseconds(Int64(self.random.int(1...30))))
        case 530..<560:
            if self.clients.count < self.options.streams { self.openStream() }
        case 560..<600:
            let gateway = self.gateways[self.random.int(0...1)]
            if let id = self.random.pick(gateway.pendingDials) {
                self.completeDial(id, on: gateway, succeed: !faults || self.random.chance(90))
            }
        case 600..<960:
            let gateway = self.gateways[self.random.int(0...1)]
            if self.random.chance(10), let app = self.random.pick(gateway.detached) {
                _ = app.completeWrite()
                _ = app.closeIfFinished()
            } else if let (id, app) = self.random.pick(gateway.sortedApps) {
                _ = self.appStep(id, app, on: gateway)
            }
        default:
            if faults, self.random.chance(2) {
                try self.fault()
            } else if self.options.hostile, self.random.chance(50) {
                self.hostileSend()
            }
        }
    }

    /// A fault: rare, and each marks the streams it touches.
    private func fault() throws {
        switch self.random.int(0...99) {
        case 0..<40:
            // An application aborts its connection.
            let gateway = self.gateways[self.random.int(0...1)]
            guard let (id, app) = self.random.pick(gateway.sortedApps), let plan = app.plan else { return }
            self.record("\(gateway.name): the application of stream \(plan.serial) aborts")
            self.faulted.insert(plan.serial)
            app.abortItself()
            gateway.driver.localClosed(id, error: true)
        case 40..<80:
            try self.restart(self.random.int(0...1))
        default:
            // Time jumps past the keepalive timeout without anything delivered.
            self.record("time jumps 5 s")
            self.markLiveStreamsFaulted()
            self.loop.advanceTime(by: .seconds(5))
        }
    }
}
