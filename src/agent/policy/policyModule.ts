/**
 * The agent's copy of the cluster's policies (REQ-061, ADR 0053): what the coordinator
 * sends on the heartbeat stream, kept in <data-dir>/policies.json (0600) so that an agent
 * restarted while every coordinator is down still judges by the last policies it knew.
 * The replica module asks it about every replica before the replica is started: defence
 * in depth behind the check at apply, for a record that reached the store without one.
 */
import { readFile } from "node:fs/promises";
import * as path from "node:path";
import type { HeartbeatRequest, HeartbeatResponse } from "../../api/gen/cloudless/v1/node_pb.js";
import { PolicySet, type PolicyVerdict } from "../../api/policy/evaluate.js";
import { workloadFacts } from "../../api/policy/facts.js";
import { parsePolicyDocument } from "../../api/policy/parse.js";
import { MAX_POLICIES } from "../../api/policy/policy.js";
import type { WorkloadSpecDocument } from "../../api/workload/spec.js";
import { writeSecretFile } from "../../lib/atomicFile.js";
import type { Logger } from "../../observe/logger.js";
import type { AgentModule } from "../agentModule.js";

export const policiesFileName = "policies.json";

interface StoredPolicies {
  fingerprint: string;
  documents: string[];
}

export interface PolicyModuleOptions {
  dataDir: string;
  logger: Logger;
  /** The policies changed: replicas not started yet are judged again. */
  onChange: () => void;
}

export class PolicyModule implements AgentModule {
  readonly name = "policies";
  private set: PolicySet | undefined;
  private fingerprint = "";
  private writes: Promise<void> = Promise.resolve();

  constructor(private readonly options: PolicyModuleOptions) {}

  async start(): Promise<void> {
    const file = path.join(this.options.dataDir, policiesFileName);
    let text: string;
    try {
      text = await readFile(file, "utf8");
    } catch {
      return; // None kept yet: the coordinator's come with the first stream.
    }
    try {
      const stored = JSON.parse(text) as StoredPolicies;
      if (typeof stored.fingerprint !== "string" || !Array.isArray(stored.documents)) {
        throw new Error("not a policies file");
      }
      this.adopt(stored.fingerprint, stored.documents);
    } catch (error) {
      this.options.logger.warn(
        { file, reason: error instanceof Error ? error.message : String(error) },
        "ignoring the kept policies; the coordinator sends them again",
      );
    }
  }

  receive(message: HeartbeatResponse): void {
    const snapshot = message.policies;
    if (!snapshot || snapshot.fingerprint === this.fingerprint) return;
    try {
      this.adopt(snapshot.fingerprint, snapshot.documents);
    } catch (error) {
      // A coordinator never sends a policy it did not validate; one this agent cannot read
      // comes from a newer coordinator. Keep judging by the last set that could be read.
      this.options.logger.warn(
        { reason: error instanceof Error ? error.message : String(error) },
        "cannot read the policies the coordinator sent; keeping the previous ones",
      );
      return;
    }
    const stored: StoredPolicies = {
      fingerprint: snapshot.fingerprint,
      documents: snapshot.documents,
    };
    const file = path.join(this.options.dataDir, policiesFileName);
    this.writes = this.writes
      .then(() => writeSecretFile(file, JSON.stringify(stored)))
      .catch((error: unknown) =>
        this.options.logger.warn({ err: error, file }, "cannot keep the policies on disk"),
      );
    this.options.logger.info(
      { policies: snapshot.documents.length },
      "policies changed; replicas not started yet are judged again",
    );
    this.options.onChange();
  }

  /** The policy set in force; undefined while none is known (the egress module compiles it). */
  get current(): PolicySet | undefined {
    return this.set;
  }

  /** The verdict on a replica's workload spec; undefined while no policies are known. */
  judge(doc: WorkloadSpecDocument): PolicyVerdict | undefined {
    return this.set?.evaluateWorkload(workloadFacts(doc));
  }

  statusMessages(): HeartbeatRequest[] {
    return [];
  }

  async stop(): Promise<void> {
    await this.writes;
  }

  private adopt(fingerprint: string, documents: readonly string[]): void {
    if (documents.length > MAX_POLICIES) {
      throw new Error(`${documents.length} policies; at most ${MAX_POLICIES} (MAX_POLICIES)`);
    }
    this.set = new PolicySet(documents.map((document) => parsePolicyDocument(document)));
    this.fingerprint = fingerprint;
  }
}
