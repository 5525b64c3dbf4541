/**
 * F2 on a multi-host lab: three coordinators on a three-member etcd, agents on their own
 * hosts. (1) The leader is killed: a new one within the lease TTL plus one heartbeat, and
 * scheduling resumes. (2) Every coordinator is down for at least two minutes: replicas
 * keep answering a client loop, a replica killed meanwhile is restarted by its agent,
 * and when the coordinators return no healthy replica is restarted.
 */
import { afterEach, describe, expect, it } from "vitest";
import {
  getWorkloadJson,
  removeProcessReplicas,
  replicaPid,
  waitForWorkload,
} from "../helpers/behaviour.js";
import { netlabUnavailableReason } from "../helpers/netlab.js";
import { waitFor } from "../helpers/processes.js";
import {
  allReady,
  applyWeb,
  ClientLoop,
  endpointsOf,
  type HaLab,
  heartbeatMs,
  type LabCoordinator,
  leads,
  leaseTtlMs,
  startCoordinatorProcess,
  startHaLab,
  waitForOneLeader,
} from "./haLab.js";

const unavailable = await netlabUnavailableReason();
if (unavailable) console.log(`F2 chaos scenarios skipped: ${unavailable}`);

/** The issue asks for at least two minutes; CLOUDLESS_CHAOS_OUTAGE_MS may only lengthen it. */
const outageMs = Math.max(120_000, Number(process.env.CLOUDLESS_CHAOS_OUTAGE_MS ?? 0));

const workers = [
  { name: "node-a", zone: "a" },
  { name: "node-b", zone: "b" },
  { name: "node-c", zone: "c" },
];

describe.skipIf(unavailable !== undefined)("F2 coordinator loss on a multi-host lab", () => {
  let ha: HaLab | undefined;

  afterEach(async () => {
    const dirs = [...(ha?.agentDirs.values() ?? [])];
    await ha?.lab.dispose();
    await removeProcessReplicas(dirs);
    ha = undefined;
  });

  it("F2 NFR-R1 leader coordinator loss with three coordinators: a new leader within the lease TTL plus one heartbeat, and scheduling resumes", async () => {
    ha = await startHaLab(workers);
    const lab = ha;
    await applyWeb(lab, "f2-before", "web", 3);
    await waitForWorkload(lab.cluster, "f2-before", "web", "3 ready", allReady(3), 90_000);

    const leader = await waitForOneLeader(lab);
    const killedAtMs = Date.now();
    await lab.lab.kill9(leader.process);
    // The wait's deadline is the bound itself: lease TTL plus one heartbeat, plus 1 s for
    // the timers of this shared machine.
    const successor = await waitFor(
      "a new leader",
      () => lab.coordinators.find((c) => c !== leader && leads(c)),
      leaseTtlMs + heartbeatMs + 1_000,
      20,
    );
    const electedMs = Date.now() - killedAtMs;

    await applyWeb(lab, "f2-after", "web", 3);
    await waitForWorkload(lab.cluster, "f2-after", "web", "3 ready", allReady(3), 60_000);
    const scheduledMs = Date.now() - killedAtMs;
    // Nothing that ran before the loss was disturbed by it.
    const before = await getWorkloadJson(lab.cluster, "f2-before", "web");
    expect(allReady(3)(before)).toBe(true);
    expect(before.replicas.every((r) => r.restarts === 0)).toBe(true);
    console.log(
      `F2 leader loss: ${leader.name} killed; ${successor.name} leads after ${electedMs} ms (lease ${leaseTtlMs} ms + heartbeat ${heartbeatMs} ms); a workload applied after the kill ready after ${scheduledMs} ms`,
    );
  });

  it("F2 NFR-A1 all coordinators down for two minutes: replicas answer a client loop with zero failed requests, a killed replica is restarted by its agent, and no healthy replica restarts after they return", async () => {
    ha = await startHaLab(workers);
    const lab = ha;
    await applyWeb(lab, "f2-outage", "web", 3);
    const before = await waitForWorkload(
      lab.cluster,
      "f2-outage",
      "web",
      "3 ready",
      allReady(3),
      90_000,
    );
    const pidsBefore = new Map<string, number>();
    for (const replica of before.replicas) {
      pidsBefore.set(
        replica.id,
        await replicaPid(lab.agentDirs.get(replica.node) as string, replica.id),
      );
    }

    const loop = new ClientLoop(endpointsOf(lab, before));
    try {
      const downAtMs = Date.now();
      await Promise.all(lab.coordinators.map((c) => lab.lab.kill9(c.process)));

      // A replica crashes during the outage: its own agent restarts it.
      const victim = before.replicas[0];
      if (!victim) throw new Error("no replica");
      loop.expectDown(victim.id);
      const victimKilledAtMs = Date.now();
      process.kill(pidsBefore.get(victim.id) as number, "SIGKILL");
      await waitFor(
        `replica ${victim.id} to answer again, restarted by its agent`,
        () => loop.recoveredAtMs(victim.id),
        30_000,
        100,
      );
      const restartedAfterMs = (loop.recoveredAtMs(victim.id) as number) - victimKilledAtMs;
      const victimPid = await replicaPid(lab.agentDirs.get(victim.node) as string, victim.id);
      expect(victimPid).not.toBe(pidsBefore.get(victim.id));

      // The rest of the outage: the loop keeps requesting; nothing but the wait runs.
      await waitFor(
        "the outage to last its full length",
        () => Date.now() - downAtMs >= outageMs,
        outageMs + 5_000,
        1_000,
      );
      const outageLastedMs = Date.now() - downAtMs;

      const returnedAtMs = Date.now();
      await Promise.all(lab.coordinators.map((c: LabCoordinator) => startCoordinatorProcess(c)));
      for (const c of lab.coordinators) lab.lab.track(c.process);
      await waitForOneLeader(lab, 30_000);
      for (const worker of workers) await lab.cluster.waitForStatus(worker.name, "Ready", 60_000);
      const after = await waitForWorkload(
        lab.cluster,
        "f2-outage",
        "web",
        "3 ready again, the victim's restart reported",
        // The store still holds the pre-outage status until each agent's full report
        // after its reconnect lands: wait for the report that carries the restart.
        (w) => allReady(3)(w) && (w.replicas.find((r) => r.id === victim.id)?.restarts ?? 0) >= 1,
        60_000,
      );
      const reconciledMs = Date.now() - returnedAtMs;
      await loop.stop();

      // Same replicas, same processes: nothing healthy was restarted by the reconnect.
      expect(after.replicas.map((r) => r.id).sort()).toEqual(
        before.replicas.map((r) => r.id).sort(),
      );
      for (const replica of after.replicas) {
        const pid = await replicaPid(lab.agentDirs.get(replica.node) as string, replica.id);
        if (replica.id === victim.id) {
          expect(pid).toBe(victimPid);
          expect(replica.restarts).toBeGreaterThanOrEqual(1);
        } else {
          expect(pid).toBe(pidsBefore.get(replica.id));
          expect(replica.restarts).toBe(0);
        }
      }
      expect(loop.unexpected).toEqual([]);
      console.log(
        `F2 all coordinators down for ${outageLastedMs} ms: ${loop.requests} requests, ${loop.unexpected.length} failed (plus ${loop.expected.length} to the replica killed on purpose, back after ${restartedAfterMs} ms); coordinators back and the workload reconciled after ${reconciledMs} ms with no healthy replica restarted`,
      );
    } finally {
      await loop.stop();
    }
  });
});
