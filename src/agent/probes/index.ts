export { ProbeRunner, type ProbeRunnerOptions } from "./probeRunner.js";
export {
  type ProbeState,
  type ProbeStatus,
  type ProbeTimings,
  ProbeTracker,
  probeTimings,
} from "./probeTracker.js";
export {
  describeProbeAction,
  type ProbeAction,
  type ProbeExec,
  type ProbeFunction,
  type ProbeKind,
  type ProbeResult,
  type ProbeSpec,
  type RunProbeOptions,
} from "./probeTypes.js";
export { runProbeOnce } from "./runProbeOnce.js";
