/**
 * The restart policy, pure: what the runtime's word on a replica means given what the
 * supervisor meant to do with it, whether a replica that stopped running is started
 * again and when (crash-loop back-off) or left Failed/Succeeded, and the words its
 * report carries meanwhile. Time (`nowMs`) and randomness (the back-off jitter's `rng`)
 * come in as arguments; nothing here does I/O or keeps state, so every decision is
 * tested in process (restartPolicy.test.ts).
 */
import type { Rng } from "../../lib/rng.js";
import type { ReplicaRuntimeStatus } from "../drivers/driver.js";
import { type BackoffPolicy, backoffDelay, formatDelay } from "./backoff.js";
import type { ReplicaPhase, RestartPolicy } from "./supervisorTypes.js";

/**
 * What the supervisor means to do next with a replica, independent of what the driver
 * shows: "start" it when its back-off allows, keep it "run"ning, or leave it "done".
 */
export type Intent = "start" | "run" | "done";

/** How a run ended. */
export interface Termination {
  /** "Completed", "Error", "OOMKilled", "LivenessProbeFailed", "PortConflict", "Lost". */
  reason: string;
  failed: boolean;
  exitCode?: number;
  /** Short, for parentheses: "exit code 1". */
  detail: string;
  /** A sentence for a final status: "exited with code 1". */
  summary: string;
}

/** The end of a run the driver reports as exited. */
export function exitOf(status: ReplicaRuntimeStatus): Termination {
  const code = status.exitCode;
  if (status.oomKilled) {
    const detail = code === undefined ? "OOM killed" : `OOM killed, exit code ${code}`;
    return {
      reason: "OOMKilled",
      failed: true,
      ...(code !== undefined ? { exitCode: code } : {}),
      detail,
      summary: `killed for exceeding its memory limit (${detail})`,
    };
  }
  if (code === undefined) {
    return { reason: "Error", failed: true, detail: "exit code unknown", summary: "exited" };
  }
  return {
    reason: code === 0 ? "Completed" : "Error",
    failed: code !== 0,
    exitCode: code,
    detail: `exit code ${code}`,
    summary: `exited with code ${code}`,
  };
}

/** The replica vanished from the runtime while it was meant to run. */
export const lost: Termination = {
  reason: "Lost",
  failed: true,
  detail: "replica disappeared",
  summary: "disappeared from the runtime",
};

/** It ran under the previous agent and vanished while nobody watched. */
export const lostWhileAgentDown: Termination = {
  reason: "Lost",
  failed: true,
  detail: "replica disappeared while the agent was down",
  summary: "disappeared from the runtime while the agent was down",
};

/** The supervisor stopped the replica because its liveness probe failed. */
export function livenessFailed(failure: string): Termination {
  return {
    reason: "LivenessProbeFailed",
    failed: true,
    detail: `liveness probe failed: ${failure}`,
    summary: `killed after its liveness probe failed: ${failure}`,
  };
}

/** The supervisor stopped the replica because something else holds one of its host ports. */
export function portConflict(port: number, holder: string): Termination {
  const detail = `host port ${port} is held by ${holder}`;
  return { reason: "PortConflict", failed: true, detail, summary: `stopped because its ${detail}` };
}

/** What the supervisor knows of a replica when it reads the runtime's status. */
export interface RunView {
  intent: Intent;
  /** This supervisor has asked the driver to start it at least once. */
  startAttempted: boolean;
  /** It ran at least once, so the next start is a restart. */
  hasRun: boolean;
  /** The runtime runs a generation of its spec the coordinator has since replaced. */
  stale: boolean;
  /** A restored snapshot saw it running under the previous agent. */
  restoredRunning: boolean;
}

/** What the runtime's status of a replica means. */
export type RuntimeVerdict =
  /** Running an outdated generation while it should be (re)started: replace it. */
  | { kind: "replaceOutdated" }
  /** Running: keep it (adopt it if it was not this supervisor's start). */
  | { kind: "running" }
  | {
      kind: "notRunning";
      /** A run ended that the restart policy must judge. */
      ended?: Termination;
      /** The restored run is accounted for: forget that the snapshot saw it running. */
      forgetRestoredRun?: true;
      /** An exited copy is still there (it must be removed before a new start). */
      exists: boolean;
      /** Start it now if the supervisor then means to (and its back-off allows). */
      mayStart: boolean;
    };

/**
 * Judges a driver's status against the supervisor's view. An exited replica the
 * supervisor never started (an earlier agent's) is judged by its restart policy like
 * one of its own: a Never replica found exited is not run again.
 */
export function judgeRuntimeStatus(view: RunView, status: ReplicaRuntimeStatus): RuntimeVerdict {
  switch (status.state) {
    case "running":
      // Running with a generation the coordinator has since replaced (the agent was
      // down during the change): replace it rather than adopt it.
      return view.intent === "start" && view.stale
        ? { kind: "replaceOutdated" }
        : { kind: "running" };
    case "exited": {
      const adoptingExited =
        view.intent === "start" && !view.startAttempted && !view.hasRun && !view.stale;
      const ended = view.intent === "run" || adoptingExited ? exitOf(status) : undefined;
      return { kind: "notRunning", ...(ended ? { ended } : {}), exists: true, mayStart: true };
    }
    case "missing": {
      if (view.intent === "start" && view.restoredRunning && !view.startAttempted) {
        return {
          kind: "notRunning",
          ended: lostWhileAgentDown,
          forgetRestoredRun: true,
          exists: false,
          mayStart: false,
        };
      }
      return {
        kind: "notRunning",
        ...(view.intent === "run" ? { ended: lost } : {}),
        exists: false,
        mayStart: true,
      };
    }
  }
}

/** The back-off policy from the supervisor's options: resetAfterMs follows initialMs unless set. */
export function backoffPolicy(defaults: BackoffPolicy, given?: Partial<BackoffPolicy>) {
  const policy: BackoffPolicy = { ...defaults, ...given };
  if (given?.initialMs !== undefined && given.resetAfterMs === undefined) {
    policy.resetAfterMs = 10 * given.initialMs;
  }
  return policy;
}

/** The run history the back-off counts. */
export interface RunHistory {
  /** Consecutive failures (exits, kills, failed starts). */
  failures: number;
  /** When the current run began on the supervisor's clock. */
  runSinceMs?: number;
}

/** Failures to count from now: none once a run has lasted resetAfterMs. */
export function failuresAfterRun(history: RunHistory, nowMs: number, policy: BackoffPolicy) {
  return history.runSinceMs !== undefined && nowMs - history.runSinceMs >= policy.resetAfterMs
    ? 0
    : history.failures;
}

export type RestartDecision =
  /** Not started again: the run's end is the replica's final phase. */
  | { kind: "giveUp"; phase: "Succeeded" | "Failed"; reason: string; message: string }
  /** Started again at `atMs` (after `delayMs`), the failures counted so far. */
  | {
      kind: "restartAt";
      atMs: number;
      delayMs: number;
      failures: number;
      phase: "CrashLoopBackOff";
      reason: string;
      message: string;
    };

/**
 * Whether and when a replica whose run ended starts again: Always restarts, OnFailure
 * only after a failure, Never not. A restart waits the back-off for the consecutive
 * failures (reset by a run that lasted resetAfterMs); the message names the nominal
 * delay, never more than the actual wait (jitter only adds).
 */
export function decideRestart(input: {
  restartPolicy: RestartPolicy;
  termination: Termination;
  history: RunHistory;
  nowMs: number;
  backoff: BackoffPolicy;
  rng: Rng;
}): RestartDecision {
  const { restartPolicy, termination, nowMs, backoff } = input;
  const restart =
    restartPolicy === "Always" || (restartPolicy === "OnFailure" && termination.failed);
  if (!restart) {
    return {
      kind: "giveUp",
      phase: termination.failed ? "Failed" : "Succeeded",
      reason: termination.reason,
      message: termination.summary,
    };
  }
  const failures = failuresAfterRun(input.history, nowMs, backoff) + 1;
  const { nominalMs, delayMs } = backoffDelay(backoff, failures, input.rng);
  // Liveness kills and port conflicts keep their own reason: "why was it restarted?"
  // is the question.
  const reason =
    termination.reason === "LivenessProbeFailed" || termination.reason === "PortConflict"
      ? termination.reason
      : "CrashLoopBackOff";
  const what = termination.failed ? "failed" : "exited";
  return {
    kind: "restartAt",
    atMs: nowMs + delayMs,
    delayMs,
    failures,
    phase: "CrashLoopBackOff",
    reason,
    message: `back-off ${formatDelay(nominalMs)} restarting ${what} replica (${termination.detail})`,
  };
}

/** The next attempt after a start that failed (the driver refused or did not answer). */
export interface RetryDecision {
  atMs: number;
  delayMs: number;
  failures: number;
  /** Pending until it has run once, then CrashLoopBackOff. */
  phase: Extract<ReplicaPhase, "Pending" | "CrashLoopBackOff">;
  message: string;
}

/**
 * Failed starts retry with the same back-off as crashes, so a missing image or a
 * broken engine costs one attempt per back-off period, not one per sync.
 */
export function decideRetryAfterFailedStart(input: {
  failures: number;
  hasRun: boolean;
  /** The driver's failure, one line. */
  message: string;
  nowMs: number;
  backoff: BackoffPolicy;
  rng: Rng;
}): RetryDecision {
  const failures = input.failures + 1;
  const { nominalMs, delayMs } = backoffDelay(input.backoff, failures, input.rng);
  return {
    atMs: input.nowMs + delayMs,
    delayMs,
    failures,
    phase: input.hasRun ? "CrashLoopBackOff" : "Pending",
    message: `${input.message} (back-off ${formatDelay(nominalMs)})`,
  };
}

/** Whether a start may happen now, or how long its back-off still lasts. */
export function startTiming(
  nextAttemptAtMs: number,
  nowMs: number,
): { kind: "now" } | { kind: "wait"; waitMs: number } {
  const waitMs = nextAttemptAtMs - nowMs;
  return waitMs > 0 ? { kind: "wait", waitMs } : { kind: "now" };
}

/** Reason and message of a Running replica: a restarted one remembers why. */
export function runningStatus(
  restarts: number,
  last: Termination | undefined,
): { reason: string; message: string } {
  return restarts > 0 && last
    ? { reason: last.reason, message: `running; restarted after ${last.detail}` }
    : { reason: "", message: "running" };
}

/** Reason and message of a replica being started (again). */
export function startingStatus(
  isRestart: boolean,
  last: Termination | undefined,
): { reason: string; message: string } {
  return isRestart && last
    ? { reason: last.reason, message: `restarting after ${last.detail}` }
    : { reason: "", message: "starting" };
}
