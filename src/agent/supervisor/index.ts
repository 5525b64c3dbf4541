export {
  type BackoffPolicy,
  backoffDelay,
  defaultBackoff,
  formatDelay,
} from "./backoff.js";
export { DeadlineExceededError, withDeadline } from "./deadline.js";
export {
  type AllocatePort,
  allocateFreePort,
  assignHostPorts,
  buildRunSpec,
  portEnvName,
  resolveProbeAction,
} from "./replicaPorts.js";
export { ReplicaSupervisor, type ReplicaSupervisorOptions } from "./replicaSupervisor.js";
export type {
  DesiredReplica,
  ReplicaPhase,
  ReplicaReport,
  RestartPolicy,
  SupervisorSnapshot,
} from "./supervisorTypes.js";
