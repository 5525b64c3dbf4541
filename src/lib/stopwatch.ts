/**
 * Real elapsed time, for measuring the real world: how long a request, a disk write or an
 * upload took (logs, metrics, probes), and how long a loop has waited on a kernel or a
 * container engine it polls with real timers (ADR 0041). Monotonic, so a wall-clock step
 * neither shortens nor stretches what it measures.
 *
 * Decisions never read it: what the control plane and the agent decide by time reads the
 * injected Clock (src/lib/clock.ts), so tests and the simulator can drive it.
 */

/** Starts measuring; the returned function gives the milliseconds since (fractional). */
export function startStopwatch(): () => number {
  const startedMs = performance.now();
  return () => performance.now() - startedMs;
}
