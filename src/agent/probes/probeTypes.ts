/**
 * Health probes (REQ-032): liveness failures restart a replica, readiness gates its
 * traffic. The shapes follow Kubernetes so operators meet no surprises.
 */

/** What a probe does. Ports are host ports (the supervisor maps container ports to them). */
export type ProbeAction =
  | { http: { path: string; port: number; host?: string } }
  | { tcp: { port: number; host?: string } }
  | { exec: { command: string[] } };

export interface ProbeSpec {
  action: ProbeAction;
  periodSeconds: number;
  timeoutSeconds: number;
  /** Consecutive failures after which the probe counts as failing. */
  failureThreshold: number;
  /** Consecutive successes after which the probe counts as passing. */
  successThreshold: number;
  /** Time after the replica started before the first probe. */
  initialDelaySeconds: number;
}

export interface ProbeResult {
  ok: boolean;
  /** One line fit for a replica's status: "HTTP 500", "connection refused", "exit code 1". */
  message: string;
  /** The connection was refused: nothing listened there to answer (so nobody to identify). */
  refused?: boolean;
}

/** Runs a command inside the replica; the runtime driver's exec, narrowed. */
export type ProbeExec = (
  command: string[],
  timeoutMs: number,
) => Promise<{ exitCode: number; stdout?: string; stderr?: string }>;

export interface RunProbeOptions {
  timeoutMs: number;
  /** Needed by exec probes; without it they fail with a clear message. */
  exec?: ProbeExec;
  /** Host for http/tcp probes that do not name one; default 127.0.0.1. */
  host?: string;
}

/** The function that performs one probe; injectable so supervisors run under simulated time. */
export type ProbeFunction = (action: ProbeAction, options: RunProbeOptions) => Promise<ProbeResult>;

export type ProbeKind = "liveness" | "readiness";

/** Describes an action in a log or status line, e.g. "http 127.0.0.1:8080/healthz". */
export function describeProbeAction(action: ProbeAction, defaultHost = "127.0.0.1"): string {
  if ("http" in action) {
    return `http ${action.http.host ?? defaultHost}:${action.http.port}${action.http.path}`;
  }
  if ("tcp" in action) return `tcp ${action.tcp.host ?? defaultHost}:${action.tcp.port}`;
  return `exec ${action.exec.command.join(" ")}`;
}
