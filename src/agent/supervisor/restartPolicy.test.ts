import { describe, expect, it } from "vitest";
import { seededRng } from "../../lib/rng.js";
import type { ReplicaRuntimeStatus } from "../drivers/driver.js";
import { type BackoffPolicy, defaultBackoff } from "./backoff.js";
import {
  backoffPolicy,
  decideRestart,
  decideRetryAfterFailedStart,
  exitOf,
  failuresAfterRun,
  judgeRuntimeStatus,
  livenessFailed,
  lost,
  lostWhileAgentDown,
  portConflict,
  type RunView,
  runningStatus,
  startingStatus,
  startTiming,
} from "./restartPolicy.js";

const nowMs = 1_700_000_000_000;
const backoff: BackoffPolicy = { initialMs: 1000, maxMs: 60_000, resetAfterMs: 10_000 };

function view(overrides: Partial<RunView> = {}): RunView {
  return {
    intent: "run",
    startAttempted: true,
    hasRun: true,
    stale: false,
    restoredRunning: false,
    ...overrides,
  };
}

const running: ReplicaRuntimeStatus = { state: "running", startedAtMs: nowMs };
const exited1: ReplicaRuntimeStatus = { state: "exited", exitCode: 1 };
const missing: ReplicaRuntimeStatus = { state: "missing" };

describe("restart policy: what the runtime's status means", () => {
  it("keeps a running replica, but replaces one running an outdated generation before its (re)start", () => {
    expect(judgeRuntimeStatus(view(), running)).toEqual({ kind: "running" });
    expect(judgeRuntimeStatus(view({ intent: "start", stale: true }), running)).toEqual({
      kind: "replaceOutdated",
    });
    // Adopted (not started by us, current generation): kept.
    expect(judgeRuntimeStatus(view({ intent: "start", startAttempted: false }), running)).toEqual({
      kind: "running",
    });
  });

  it("judges an exit of a replica it runs, or one found exited that it never started (an earlier agent's)", () => {
    expect(judgeRuntimeStatus(view(), exited1)).toEqual({
      kind: "notRunning",
      ended: exitOf(exited1),
      exists: true,
      mayStart: true,
    });
    const foundExited = view({ intent: "start", startAttempted: false, hasRun: false });
    expect(judgeRuntimeStatus(foundExited, exited1)).toMatchObject({ ended: exitOf(exited1) });
    // Waiting for its back-off: the exit was judged already; only a start may follow.
    expect(judgeRuntimeStatus(view({ intent: "start" }), exited1)).toEqual({
      kind: "notRunning",
      exists: true,
      mayStart: true,
    });
    // An outdated copy found exited is replaced, not judged.
    expect(
      judgeRuntimeStatus(
        view({ intent: "start", startAttempted: false, hasRun: false, stale: true }),
        exited1,
      ),
    ).not.toHaveProperty("ended");
  });

  it("NFR-A1 a replica gone from the runtime is Lost; one that ran under the previous agent is lost while the agent was down", () => {
    expect(judgeRuntimeStatus(view(), missing)).toEqual({
      kind: "notRunning",
      ended: lost,
      exists: false,
      mayStart: true,
    });
    expect(
      judgeRuntimeStatus(
        view({ intent: "start", startAttempted: false, restoredRunning: true }),
        missing,
      ),
    ).toEqual({
      kind: "notRunning",
      ended: lostWhileAgentDown,
      forgetRestoredRun: true,
      exists: false,
      mayStart: false,
    });
    // Never started, never ran: simply started.
    expect(
      judgeRuntimeStatus(view({ intent: "start", startAttempted: false, hasRun: false }), missing),
    ).toEqual({ kind: "notRunning", exists: false, mayStart: true });
  });

  it("describes exits, OOM kills, liveness kills and port conflicts", () => {
    expect(exitOf({ state: "exited", exitCode: 0 })).toEqual({
      reason: "Completed",
      failed: false,
      exitCode: 0,
      detail: "exit code 0",
      summary: "exited with code 0",
    });
    expect(exitOf({ state: "exited", exitCode: 137, oomKilled: true })).toEqual({
      reason: "OOMKilled",
      failed: true,
      exitCode: 137,
      detail: "OOM killed, exit code 137",
      summary: "killed for exceeding its memory limit (OOM killed, exit code 137)",
    });
    expect(exitOf({ state: "exited" })).toMatchObject({
      reason: "Error",
      detail: "exit code unknown",
    });
    expect(livenessFailed("HTTP 500").summary).toBe(
      "killed after its liveness probe failed: HTTP 500",
    );
    expect(portConflict(8080, "pid 7 (sshd)")).toEqual({
      reason: "PortConflict",
      failed: true,
      detail: "host port 8080 is held by pid 7 (sshd)",
      summary: "stopped because its host port 8080 is held by pid 7 (sshd)",
    });
  });
});

describe("restart policy: restart, back off or give up", () => {
  it("REQ-020 Always restarts with a back-off doubling per consecutive failure, naming the nominal delay", () => {
    const rng = seededRng(1);
    let failures = 0;
    const messages: string[] = [];
    for (let i = 0; i < 8; i++) {
      const decision = decideRestart({
        restartPolicy: "Always",
        termination: exitOf(exited1),
        history: { failures },
        nowMs,
        backoff,
        rng,
      });
      if (decision.kind !== "restartAt") throw new Error("expected a restart");
      expect(decision.phase).toBe("CrashLoopBackOff");
      expect(decision.reason).toBe("CrashLoopBackOff");
      // Jitter only adds, up to 10 %, and the cap applies last.
      const nominalMs = Math.min(60_000, 1000 * 2 ** i);
      expect(decision.delayMs).toBeGreaterThanOrEqual(nominalMs);
      expect(decision.delayMs).toBeLessThanOrEqual(Math.min(60_000, nominalMs * 1.1));
      expect(decision.atMs).toBe(nowMs + decision.delayMs);
      failures = decision.failures;
      messages.push(decision.message);
    }
    expect(messages).toEqual([
      "back-off 1s restarting failed replica (exit code 1)",
      "back-off 2s restarting failed replica (exit code 1)",
      "back-off 4s restarting failed replica (exit code 1)",
      "back-off 8s restarting failed replica (exit code 1)",
      "back-off 16s restarting failed replica (exit code 1)",
      "back-off 32s restarting failed replica (exit code 1)",
      "back-off 1m0s restarting failed replica (exit code 1)",
      "back-off 1m0s restarting failed replica (exit code 1)",
    ]);
    expect(failures).toBe(8);
  });

  it("REQ-020 a run that lasted resetAfterMs starts the back-off again from the start", () => {
    const decide = (runSinceMs: number) =>
      decideRestart({
        restartPolicy: "Always",
        termination: exitOf({ state: "exited", exitCode: 2 }),
        history: { failures: 5, runSinceMs },
        nowMs,
        backoff,
        rng: seededRng(1),
      });
    expect(decide(nowMs - 10_000)).toMatchObject({
      failures: 1,
      message: "back-off 1s restarting failed replica (exit code 2)",
    });
    expect(decide(nowMs - 9_999)).toMatchObject({
      failures: 6,
      message: "back-off 32s restarting failed replica (exit code 2)",
    });
    expect(failuresAfterRun({ failures: 3 }, nowMs, backoff)).toBe(3);
    expect(failuresAfterRun({ failures: 3, runSinceMs: nowMs - 10_000 }, nowMs, backoff)).toBe(0);
  });

  it("REQ-020 OnFailure restarts only failures, Never nothing; the end is Succeeded or Failed with the run's reason", () => {
    const decide = (restartPolicy: "OnFailure" | "Never", code: number) =>
      decideRestart({
        restartPolicy,
        termination: exitOf({ state: "exited", exitCode: code }),
        history: { failures: 0 },
        nowMs,
        backoff,
        rng: seededRng(1),
      });
    expect(decide("OnFailure", 0)).toEqual({
      kind: "giveUp",
      phase: "Succeeded",
      reason: "Completed",
      message: "exited with code 0",
    });
    expect(decide("OnFailure", 3)).toMatchObject({ kind: "restartAt", failures: 1 });
    expect(decide("Never", 1)).toEqual({
      kind: "giveUp",
      phase: "Failed",
      reason: "Error",
      message: "exited with code 1",
    });
  });

  it("REQ-032 liveness kills and port conflicts keep their own reason; a clean exit under Always is 'exited'", () => {
    const decide = (termination: ReturnType<typeof exitOf>) =>
      decideRestart({
        restartPolicy: "Always",
        termination,
        history: { failures: 0 },
        nowMs,
        backoff,
        rng: seededRng(1),
      });
    expect(decide(livenessFailed("HTTP 500"))).toMatchObject({
      reason: "LivenessProbeFailed",
      message: "back-off 1s restarting failed replica (liveness probe failed: HTTP 500)",
    });
    expect(decide(portConflict(8080, "pid 1 (x)"))).toMatchObject({ reason: "PortConflict" });
    expect(decide(exitOf({ state: "exited", exitCode: 0 }))).toMatchObject({
      reason: "CrashLoopBackOff",
      message: "back-off 1s restarting exited replica (exit code 0)",
    });
  });

  it("a failed start retries with the same back-off: Pending until it has run, CrashLoopBackOff after", () => {
    const retry = decideRetryAfterFailedStart({
      failures: 2,
      hasRun: false,
      message: "image web:1 is not present locally and could not be pulled",
      nowMs,
      backoff,
      rng: seededRng(1),
    });
    expect(retry).toMatchObject({
      failures: 3,
      phase: "Pending",
      message: "image web:1 is not present locally and could not be pulled (back-off 4s)",
    });
    expect(retry.atMs).toBe(nowMs + retry.delayMs);
    expect(
      decideRetryAfterFailedStart({
        failures: 0,
        hasRun: true,
        message: "boom",
        nowMs,
        backoff,
        rng: seededRng(1),
      }),
    ).toMatchObject({ phase: "CrashLoopBackOff", message: "boom (back-off 1s)" });
  });

  it("the same seed gives the same delays (jitter comes from the injected rng)", () => {
    const delays = (seed: number) => {
      const rng = seededRng(seed);
      return [1, 2, 3].map(
        (failures) =>
          decideRetryAfterFailedStart({
            failures,
            hasRun: true,
            message: "x",
            nowMs,
            backoff,
            rng,
          }).delayMs,
      );
    };
    expect(delays(7)).toEqual(delays(7));
    expect(delays(7)).not.toEqual(delays(8));
  });

  it("starts when the back-off has run out, else says how long is left", () => {
    expect(startTiming(0, nowMs)).toEqual({ kind: "now" });
    expect(startTiming(nowMs, nowMs)).toEqual({ kind: "now" });
    expect(startTiming(nowMs + 250, nowMs)).toEqual({ kind: "wait", waitMs: 250 });
  });

  it("a restarted replica's Running and Starting status say why it was restarted", () => {
    const last = exitOf(exited1);
    expect(runningStatus(0, undefined)).toEqual({ reason: "", message: "running" });
    expect(runningStatus(0, last)).toEqual({ reason: "", message: "running" });
    expect(runningStatus(2, last)).toEqual({
      reason: "Error",
      message: "running; restarted after exit code 1",
    });
    expect(startingStatus(false, undefined)).toEqual({ reason: "", message: "starting" });
    expect(startingStatus(true, last)).toEqual({
      reason: "Error",
      message: "restarting after exit code 1",
    });
  });

  it("resetAfterMs follows a given initialMs unless it is given too", () => {
    expect(backoffPolicy(defaultBackoff)).toEqual(defaultBackoff);
    expect(backoffPolicy(defaultBackoff, { initialMs: 50 })).toEqual({
      initialMs: 50,
      maxMs: 60_000,
      resetAfterMs: 500,
    });
    expect(backoffPolicy(defaultBackoff, { initialMs: 50, resetAfterMs: 70 }).resetAfterMs).toBe(
      70,
    );
  });
});
