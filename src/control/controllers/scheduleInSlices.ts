import type { Clock } from "../../lib/clock.js";
import { scheduleSteps } from "../scheduler/index.js";
import type { Plan, ScheduleInput } from "../scheduler/types.js";
import { yieldToEventLoop } from "../store/txnBatches.js";

/**
 * The longest the scheduler runs before a pass lets pending I/O in. Deciding 20,000
 * replicas on 2,000 nodes took 8.2 s in one piece: no heartbeat was read meanwhile, and
 * every node looked silent when it ended. Each turn given away costs the pass what the
 * rest of the coordinator has queued (100–300 ms when loaded): 50 ms slices made a
 * failover's 2,000 replacements take 7 s to decide instead of 1 s, 250 ms slices keep a
 * heartbeat's wait far below the 2 s a node may be silent before suspicion (ADR 0025).
 */
export const scheduleSliceMs = 250;

/**
 * Runs the pure scheduler in slices of about `sliceMs` with a turn of the event loop
 * between them, so heartbeats and reports are read while a large batch is decided. The
 * plan is the one schedule() makes from the same input: it is made from the snapshot as
 * it was, and the plan applier re-checks it against the nodes as they are when it writes.
 * `busyMs` is the scheduler's own time, without the turns given away.
 */
export async function scheduleInSlices(
  input: ScheduleInput,
  clock: Pick<Clock, "nowMs">,
  sliceMs = scheduleSliceMs,
  letIoIn: () => Promise<void> = yieldToEventLoop,
): Promise<{ plan: Plan; busyMs: number }> {
  const steps = scheduleSteps(input);
  let busyMs = 0;
  let sliceStartMs = clock.nowMs();
  for (;;) {
    const step = steps.next();
    const nowMs = clock.nowMs();
    if (step.done) return { plan: step.value, busyMs: busyMs + nowMs - sliceStartMs };
    if (nowMs - sliceStartMs >= sliceMs) {
      busyMs += nowMs - sliceStartMs;
      await letIoIn();
      sliceStartMs = clock.nowMs();
    }
  }
}
