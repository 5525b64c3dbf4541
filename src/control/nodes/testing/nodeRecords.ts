import { emptyCapacity, emptyInfo, type NodeRecord } from "../nodeRecord.js";

/** A freshly enrolled node's record, as tests put it in a store: NotReady, nothing reported. */
export function testNodeRecord(name: string): NodeRecord {
  return {
    name,
    uid: name,
    status: "NotReady",
    statusReason: "",
    region: "",
    zone: "",
    labels: {},
    taints: [],
    capacity: emptyCapacity(),
    info: emptyInfo(),
    cordoned: false,
    draining: false,
    enrolledAtMs: 0,
    lastTransitionAtMs: 0,
    certSerials: [],
    certExpiresAtMs: 0,
    address: "",
    enrollments: 1,
  };
}
