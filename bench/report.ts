/**
 * bench/RESULTS.md from bench/results.json: each measure beside its target and the
 * reference points, with the machine, commit and date.
 */

// biome-ignore lint/suspicious/noExplicitAny: results are a loose JSON document
type Json = any;

interface Row {
  measure: string;
  result: string;
  target: string;
  met: "yes" | "no" | "—" | "n/a" | "below size";
  at: string;
  reference: string;
}

const fmtMs = (ms: unknown) =>
  typeof ms === "number" ? (ms >= 10_000 ? `${(ms / 1000).toFixed(1)} s` : `${ms} ms`) : "—";
const fmtNum = (n: unknown) => (typeof n === "number" ? n.toLocaleString("en-US") : "—");

function check(value: unknown, ok: (v: number) => boolean): Row["met"] {
  if (typeof value !== "number" || Number.isNaN(value)) return "n/a";
  return ok(value) ? "yes" : "no";
}

/**
 * A target set for 5,000 nodes / 50,000 replicas (or a 10-minute steady run) is not met
 * by a smaller run: a pass there says "below size", a miss stays a miss.
 */
function atSize(met: Row["met"], reachedSize: boolean): Row["met"] {
  return met === "yes" && !reachedSize ? "below size" : met;
}

export function buildRows(r: Json): Row[] {
  const rows: Row[] = [];
  const nodesRun = r.e2e?.nodes ?? r.sizes?.nodes ?? 0;
  const replicasRun = r.e2e?.replicas ?? r.sizes?.replicas ?? 0;
  const fullFleet = nodesRun >= 5000;
  const fullLoad = fullFleet && replicasRun >= 50_000;
  const fullSteady = fullFleet && (r.steady?.durationS ?? 0) >= 600;
  const s5 = r.scheduler?.nodes5000;
  const sizes = r.sizes ?? {};
  const fleet = `${fmtNum(r.e2e?.nodes ?? sizes.nodes)} nodes`;
  const fleetAndReplicas = `${fmtNum(r.e2e?.nodes ?? sizes.nodes)} nodes / ${fmtNum(r.e2e?.replicas ?? sizes.replicas)} replicas`;
  rows.push({
    measure: "Scheduler decision P50 / P95 / P99 (mixed scenarios)",
    result: s5 ? `${s5.p50Ms} / ${s5.p95Ms} / ${s5.p99Ms} ms` : "—",
    target: "P99 ≤ 5 ms",
    met: check(s5?.p99Ms, (v) => v <= 5),
    at: "5,000 nodes (harness)",
    reference: "original brief: 200 ms P50 / 800 ms P95",
  });
  for (const [name, scenario] of Object.entries<Json>(s5?.scenarios ?? {})) {
    rows.push({
      measure: `  · ${name}: P50 / P99 (CPU P99)`,
      result: `${scenario.p50Ms} / ${scenario.p99Ms} ms (${scenario.cpuP99Ms} ms)`,
      target: "P99 ≤ 5 ms",
      met: check(scenario.p99Ms, (v) => v <= 5),
      at: "5,000 nodes (harness)",
      reference: "",
    });
  }
  rows.push({
    measure: "Scheduler placements/s (one batch call, binpack / spread+anti)",
    result: s5
      ? `${fmtNum(s5.scenarios?.binpack?.placementsPerSec)} / ${fmtNum(s5.scenarios?.["spread+anti"]?.placementsPerSec)}`
      : "—",
    target: "—",
    met: "—",
    at: "5,000 nodes (harness)",
    reference: "Nomad C1M ~3,750/s; Kubernetes scheduler-throughput test fails below 400 pods/s",
  });
  rows.push({
    measure: "E2E placements/s to Running (coordinator view)",
    result: fmtNum(r.e2e?.placementsPerSec),
    target: "≥ 5,000/s at 5,000 nodes / 50,000 replicas",
    met: atSize(
      check(r.e2e?.placementsPerSec, (v) => v >= 5000),
      fullLoad,
    ),
    at: fleetAndReplicas,
    reference: "Nomad C1M ~3,750/s, C2M ~1,500/s; Kubernetes fails below 400 pods/s",
  });
  rows.push({
    measure: "  · running on the nodes (agent view) /s",
    result: fmtNum(r.e2e?.agentRunningPerSec),
    target: "—",
    met: "—",
    at: fleetAndReplicas,
    reference: "",
  });
  const sl = r.failover?.streamLoss;
  rows.push({
    measure: "Failover, stream loss: replacement Running P50 / P95 / P99",
    result:
      sl?.p50Ms !== undefined
        ? `${fmtMs(sl.p50Ms)} / ${fmtMs(sl.p95Ms)} / ${fmtMs(sl.p99Ms)}`
        : "—",
    target: "P50 ≤ 1.5 s, P95 ≤ 3 s",
    met: atSize(
      sl?.p50Ms === undefined || sl.error
        ? "n/a"
        : sl.p50Ms <= 1500 && sl.p95Ms <= 3000
          ? "yes"
          : "no",
      fullFleet,
    ),
    at: `${fmtNum(sl?.faultedNodes)} of ${fleet} killed, ${fmtNum(sl?.lostReplicas)} replicas`,
    reference: "brief 3 s P50 / 10 s P95; Kubernetes default eviction ~50 s + 300 s",
  });
  const si = r.failover?.silent;
  rows.push({
    measure: "Failover, silenced: replacement Running P50 / P95 / P99",
    result:
      si?.p50Ms !== undefined
        ? `${fmtMs(si.p50Ms)} / ${fmtMs(si.p95Ms)} / ${fmtMs(si.p99Ms)}`
        : "—",
    target: "P50 ≤ 3 s, P95 ≤ 5 s",
    met: atSize(
      si?.p50Ms === undefined || si.error
        ? "n/a"
        : si.p50Ms <= 3000 && si.p95Ms <= 5000
          ? "yes"
          : "no",
      fullFleet,
    ),
    at: `${fmtNum(si?.faultedNodes)} of ${fleet} silenced, ${fmtNum(si?.lostReplicas)} replicas`,
    reference: "brief 3 s P50 / 10 s P95; Kubernetes default eviction ~50 s + 300 s",
  });
  rows.push({
    measure: "False Lost verdicts (steady run / whole run)",
    result: `${fmtNum(r.steady?.falseLost)} / ${fmtNum(r.failover?.silent?.falseLost)}`,
    target: "0 in a 10-minute steady run",
    met: atSize(
      check(r.steady?.falseLost, (v) => v === 0),
      fullSteady,
    ),
    at: `${fleet}, ${r.steady?.durationS ?? "—"} s steady`,
    reference: "",
  });
  rows.push({
    measure: "Membership: join → all Ready",
    result: fmtMs(r.membership?.allReadyMs),
    target: "≤ 30 s for 5,000 nodes",
    met: atSize(
      check(r.membership?.allReadyMs, (v) => v <= 30_000),
      fullFleet,
    ),
    at: fleet,
    reference: "",
  });
  rows.push({
    measure: "Coordinator RSS at steady state (median / peak)",
    result:
      r.memory?.coordinatorRssMiB !== undefined
        ? `${r.memory.coordinatorRssMiB} / ${r.memory.coordinatorPeakRssMiB} MiB`
        : "—",
    target: "≤ 1 GiB at 5,000 nodes / 50,000 replicas",
    met: atSize(
      check(r.memory?.coordinatorRssMiB, (v) => v <= 1024),
      fullLoad,
    ),
    at: fleetAndReplicas,
    reference: "",
  });
  rows.push({
    measure: "Coordinator CPU at steady state",
    result:
      r.coordinator?.steadyCpuPercent !== undefined
        ? `${r.coordinator.steadyCpuPercent}% of one core`
        : "—",
    target: "—",
    met: "—",
    at: fleetAndReplicas,
    reference: "",
  });
  rows.push({
    measure: "Idle `cloudless up` coordinator + agent RSS",
    result:
      r.memory?.idleUpRssMiB !== undefined
        ? `${r.memory.idleUpRssMiB} MiB (${r.idle?.coordinatorRssMiB} + ${r.idle?.agentRssMiB})`
        : "—",
    target: "≤ 200 MiB",
    met: check(r.memory?.idleUpRssMiB, (v) => v <= 200),
    at: "1 node",
    reference: "",
  });
  rows.push(...networkRows(r.network));
  return rows;
}

/** A part of the network benchmark that did not run says why, in place of a number. */
function networkResult(part: Json, format: (p: Json) => string): string {
  if (part === undefined) return "—";
  if (part.skipped) return `skipped: ${part.skipped}`;
  if (part.error) return `error: ${part.error}`;
  return format(part);
}

/** Issue 14's rows: lab link throughput, proxy latency, connection rate, endpoint fan-out. */
export function networkRows(n: Json): Row[] {
  if (!n || Object.keys(n).length === 0) return [];
  if (n.skipped) {
    return [
      {
        measure: "Service networking (lab)",
        result: `skipped: ${n.skipped}`,
        target: "—",
        met: "n/a",
        at: "",
        reference: "",
      },
    ];
  }
  const t = n.targets ?? {};
  const met = (name: string): Row["met"] =>
    t[name]?.met === "met" ? "yes" : t[name]?.met === "missed" ? "no" : "n/a";
  const link = "two lab hosts, one bridge link";
  const gbit = (p: Json) => `${p.gbitPerSec} Gbit/s`;
  return [
    {
      measure: "Plain TCP throughput (iperf3)",
      result: networkResult(n.plainTcp, gbit),
      target: "—",
      met: "—",
      at: link,
      reference: "the link itself",
    },
    {
      measure: "wireguard-go throughput (iperf3 through the tunnel)",
      result: networkResult(n.wireguardGo, gbit),
      target: "—",
      met: "—",
      at: link,
      reference: "the userspace WireGuard of Tailscale-style meshes",
    },
    {
      measure: "Mesh throughput (iperf3 to the service VIP)",
      result: networkResult(n.mesh, gbit),
      target: "≥ 5× wireguard-go",
      met: met("meshOverWireguard"),
      at: link,
      reference: `ratio ${t.meshOverWireguard?.value ?? "—"}× wireguard-go`,
    },
    {
      measure: "  · share of plain TCP",
      result:
        t.meshShareOfPlain?.value != null ? `${Math.round(t.meshShareOfPlain.value * 100)} %` : "—",
      target: "≥ 25 %",
      met: met("meshShareOfPlain"),
      at: link,
      reference: "",
    },
    {
      measure: "Relayed mesh throughput (NAT host to NAT host)",
      result: networkResult(
        n.relayed,
        (p) => `${p.gbitPerSec} Gbit/s (${p.path}${p.via ? ` via ${p.via}` : ""})`,
      ),
      target: "—",
      met: "—",
      at: "two hosts behind their own NAT",
      reference: "",
    },
    {
      measure: "Request latency direct / through proxy + mesh, P50 / P99",
      result: networkResult(
        n.latency,
        (p) =>
          `${p.direct.p50Ms} / ${p.direct.p99Ms} ms vs ${p.proxyAndMesh.p50Ms} / ${p.proxyAndMesh.p99Ms} ms (added P99 ${p.addedP99Ms} ms)`,
      ),
      target: "added P99 ≤ 1 ms",
      met: met("addedP99"),
      at: "1,000 req/s, direct path",
      reference: "",
    },
    {
      measure: "New connections/s direct / through the proxy",
      result: networkResult(n.connections, (p) => `${p.direct.perSec} / ${p.proxy.perSec}`),
      target: "—",
      met: "—",
      at: "16 concurrent clients",
      reference: "",
    },
    {
      measure: "Endpoint change on every node P50 / P99",
      result: networkResult(n.endpointChange, (p) => `${p.p50Ms} / ${p.p99Ms} ms`),
      target: "P99 ≤ 1 s",
      met: met("endpointChangeP99"),
      at: `${n.endpointChange?.hollowNodes ?? 100} hollow nodes`,
      reference: "",
    },
  ];
}

export function renderMarkdown(r: Json): string {
  const lines: string[] = [];
  lines.push(`# Cloudless benchmark results${r.quick ? " (quick run)" : ""}`);
  lines.push("");
  lines.push(
    "Written by `npm run bench` (bench/run.ts); the numbers are in bench/results.json." +
      (r.quick
        ? " This is a **quick** run at reduced sizes: a target met here is not met at the target's size."
        : ""),
  );
  lines.push("");
  // A run below the targets' sizes says why (set with --note, or added to results.json).
  if (r.note) {
    lines.push(`> ${r.note}`);
    lines.push("");
  }
  const m = r.machine ?? {};
  lines.push(`- Date: ${r.date}`);
  lines.push(`- Commit: ${r.commit}`);
  lines.push(
    `- Machine: ${m.cpuModel}, ${m.cores} cores, ${m.ramGiB} GiB RAM, ${m.os}; Node ${m.node}`,
  );
  lines.push(
    `- Load average (1 min) at start / end: ${m.loadAvgStart} / ${m.loadAvgEnd} — other work on the machine skews wall-clock latencies (CPU times are given where it matters).`,
  );
  const sizes = r.sizes ?? {};
  lines.push(
    `- Store: ${sizes.store === "etcd" ? "etcd (one member on this machine, started for the run; its CPU and memory are not in the coordinator's numbers)" : "SQLite (the coordinator's own file)"}`,
    `- Sizes: ${fmtNum(sizes.nodes)} hollow nodes in ${fmtNum(sizes.hollowProcesses)} processes, ${fmtNum(sizes.replicas)} replicas in workloads of ${sizes.replicasPerWorkload}, replica start ${sizes.replicaStartMs} ms, steady run ${sizes.steadyS} s, ${Math.round((sizes.faultFraction ?? 0) * 100)}% of nodes per fault; scheduler at ${(sizes.schedulerSizes ?? []).join("/")} nodes, ${sizes.schedulerIterations} decisions per scenario`,
  );
  lines.push(`- Run time: ${r.durationS} s`);
  lines.push("");
  lines.push("| Measure | Result | Target | Met? | At | Reference points |");
  lines.push("| --- | --- | --- | --- | --- | --- |");
  for (const row of buildRows(r)) {
    lines.push(
      `| ${row.measure} | ${row.result} | ${row.target} | ${row.met} | ${row.at} | ${row.reference} |`,
    );
  }
  lines.push("");
  lines.push("## Scheduler (harness), all sizes");
  lines.push("");
  lines.push(
    "| Nodes | Scenario | P50 ms | P95 ms | P99 ms | Max ms | CPU P50 ms | CPU P99 ms | Placements/s |",
  );
  lines.push("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
  for (const [size, result] of Object.entries<Json>(r.scheduler ?? {})) {
    if (typeof result !== "object" || result === null || !("scenarios" in result)) continue;
    for (const [name, s] of Object.entries<Json>(result.scenarios)) {
      lines.push(
        `| ${size.replace("nodes", "")} | ${name} | ${s.p50Ms} | ${s.p95Ms} | ${s.p99Ms} | ${s.maxMs} | ${s.cpuP50Ms} | ${s.cpuP99Ms} | ${s.placementsPerSec !== undefined ? `${fmtNum(s.placementsPerSec)} (${fmtNum(s.placementsPerCpuSec)} per CPU-s)` : ""} |`,
      );
    }
  }
  lines.push("");
  lines.push(
    "A decision is one schedule() call for one pending replica with its per-call setup. The size's headline P50/P95/P99 pools the three scenarios. Placements/s schedules one batch in a single call, as a controller pass does.",
  );
  lines.push("");
  lines.push("## End to end: where the time went");
  lines.push("");
  const e = r.e2e ?? {};
  const mem = r.membership ?? {};
  lines.push(
    `- Join: ${fmtNum(mem.ready)} of ${fmtNum(mem.nodes)} Ready in ${fmtMs(mem.allReadyMs)} (tokens made beforehand in ${fmtMs(mem.tokensMs)}; coordinator saw the last NodeJoined at ${fmtMs(mem.coordinatorAllJoinedMs)}; per node P50/P95/P99 from the start ${mem.perNode ? `${fmtMs(mem.perNode.p50Ms)} / ${fmtMs(mem.perNode.p95Ms)} / ${fmtMs(mem.perNode.p99Ms)}` : "—"}).`,
  );
  lines.push(
    `- Placement: ${fmtNum(e.workloads)} workloads applied in ${fmtMs(e.applyMs)}; last ReplicasPlaced event at ${fmtMs(e.allScheduledMs)}; all running on the nodes at ${fmtMs(e.agentAllRunningMs)}; coordinator API showed all Running at ${fmtMs(e.coordinatorAllRunningMs)} (one ListWorkloads took ${fmtMs(e.lastPollMs)}). Per replica, apply → running on its node: ${e.applyToRunningPerReplica ? `P50 ${fmtMs(e.applyToRunningPerReplica.p50Ms)}, P99 ${fmtMs(e.applyToRunningPerReplica.p99Ms)}` : "—"}.`,
  );
  if (typeof e.agentCrashes === "number") {
    lines.push(
      `- Agent crashes: ${e.agentCrashes} uncaught exceptions or unhandled rejections in the hollow processes; each would have ended a real agent process (the hollow process reports them and goes on).`,
    );
  }
  for (const [key, title] of [
    ["streamLoss", "Stream loss"],
    ["silent", "Silenced"],
  ] as const) {
    const f = r.failover?.[key] ?? {};
    lines.push(
      `- ${title}: ${fmtNum(f.faultedNodes)} nodes, ${fmtNum(f.lostReplicas)} replicas lost, ${fmtNum(f.replaced)} replaced; detection (fault → NodeLost) P50/P95 ${f.detection ? `${fmtMs(f.detection.p50Ms)} / ${fmtMs(f.detection.p95Ms)}` : "—"}; placed (fault → ReplicasPlaced) P50/P95 ${f.placed ? `${fmtMs(f.placed.p50Ms)} / ${fmtMs(f.placed.p95Ms)}` : "—"}; coordinator API all Running again after ${fmtMs(f.coordinatorAllRunningMs)}${f.error ? `; error: ${f.error}` : ""}.`,
    );
  }
  const st = r.steady ?? {};
  lines.push(
    `- Steady run (${st.durationS ?? "—"} s): coordinator ${st.coordinator?.cpuPercentAvg ?? "—"}% CPU avg (max ${st.coordinator?.cpuPercentMax ?? "—"}%), RSS ${st.coordinator?.rssMiBMedian ?? "—"} MiB; hollow processes ${st.hollowProcesses?.cpuPercentAvg ?? "—"}% CPU, ${st.hollowProcesses?.rssMiBMedian ?? "—"} MiB together; machine ${st.machine?.busyPercentAvg ?? "—"}% busy; false NotReady ${fmtNum(st.falseNotReady)}, false Lost ${fmtNum(st.falseLost)}.`,
  );
  const byPhase = Object.entries<Json>(st.falseVerdictsByPhase ?? {});
  if (byPhase.length > 0) {
    lines.push(
      `- False verdicts (nodes never faulted) by phase: ${byPhase.map(([phase, v]) => `${phase} ${v.notReady} NotReady / ${v.lost} Lost`).join("; ")}.`,
    );
  }
  if (st.simulatorStalls) {
    const after = st.falseVerdictsAfterSimulatorStall ?? {};
    lines.push(
      `- Simulator stalls: hollow processes' event loops were ≥ 1 s late ${fmtNum(st.simulatorStalls.atLeast1s)} times (longest ${fmtMs(st.simulatorStalls.maxMs)}); of the false verdicts above, ${fmtNum(after.notReady)} NotReady and ${fmtNum(after.lost)} Lost came within 10 s after such a stall of the node's own hollow process (its heartbeats were late at the source).`,
    );
  }
  lines.push(
    "- Replica Running times per replica come from the nodes (the fake runtime reports when a replica runs); the coordinator view is ListWorkloads polled, so it lags by up to one poll.",
  );
  lines.push("");
  const phases = Object.entries<Json>(r.phases ?? {});
  if (phases.length > 0) {
    lines.push("## Phases: CPU and memory");
    lines.push("");
    lines.push(
      "| Phase | Coordinator CPU s | Coordinator avg / max % of a core | Coordinator RSS median / max MiB | Hollow CPU s | Hollow RSS MiB | Machine busy % | Load avg max |",
    );
    lines.push("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for (const [phase, p] of phases) {
      const c = p.coordinator ?? {};
      const h = p.hollow ?? {};
      lines.push(
        `| ${phase} | ${c.cpuSeconds ?? "—"} | ${c.cpuPercentAvg ?? "—"} / ${c.cpuPercentMax ?? "—"} | ${c.rssMiBMedian ?? "—"} / ${c.rssMiBMax ?? "—"} | ${h.cpuSeconds ?? "—"} | ${h.rssMiBMax ?? "—"} | ${p.machine?.busyPercentAvg ?? "—"} | ${p.machine?.loadAvg1Max ?? "—"} |`,
      );
    }
    lines.push("");
    lines.push(
      "The hollow nodes share the machine with the coordinator: when the machine is near 100% busy, wall-clock results measure the machine as much as the coordinator.",
    );
    lines.push("");
  }
  const internals = Object.entries<Json>(r.coordinatorMetrics ?? {});
  if (internals.length > 0) {
    lines.push("## Coordinator internals per phase (its /metrics)");
    lines.push("");
    lines.push(
      "| Phase | RSS / V8 heap used / V8 heap total / external MiB | Event-loop lag P50 / P99 / max ms | GC s | Top store time (s, calls) | Top API time (s, calls) |",
    );
    lines.push("| --- | --- | --- | --- | --- | --- |");
    const top = (entries: Json) =>
      Object.entries<Json>(entries ?? {})
        .slice(0, 3)
        .map(([name, v]) => `${name} ${v.seconds} (${fmtNum(v.count)})`)
        .join(", ");
    for (const [phase, m] of internals) {
      const mem = m.memoryMiB ?? {};
      const lag = m.eventLoopLagMs ?? {};
      lines.push(
        `| ${phase} | ${mem.rss} / ${mem.heapUsed} / ${mem.heapTotal ?? "—"} / ${mem.external} | ${lag.p50} / ${lag.p99} / ${lag.max} | ${m.gcSeconds} | ${top(m.storeSeconds)} | ${top(m.apiSeconds)} |`,
      );
    }
    lines.push("");
  }
  if (r.heap) {
    lines.push("## Coordinator heap at the end of the run (V8 heap snapshot)");
    lines.push("");
    lines.push(
      `${r.heap.file}: ${fmtNum(r.heap.nodes)} objects, ${r.heap.totalMiB} MiB of live heap (self sizes), by constructor or kind:`,
    );
    lines.push("");
    lines.push("| Constructor or kind | Count | Self MiB |");
    lines.push("| --- | --- | --- |");
    for (const entry of r.heap.top ?? []) {
      lines.push(
        `| ${String(entry.name).replaceAll("|", "\\|")} | ${fmtNum(entry.count)} | ${entry.selfMiB} |`,
      );
    }
    lines.push("");
  }
  if (r.profile) {
    lines.push("## Coordinator CPU profile");
    lines.push("");
    lines.push(
      `${r.profile.file}: ${fmtMs(r.profile.totalMs)} profiled, ${r.profile.idlePercent}% idle. Self time by area (share of busy time):`,
    );
    lines.push("");
    for (const entry of r.profile.byArea ?? []) lines.push(`- ${entry.name}: ${entry.percent}%`);
    lines.push("");
    lines.push("Top inclusive (project and library code):");
    lines.push("");
    for (const entry of (r.profile.topInclusive ?? []).slice(0, 15)) {
      lines.push(`- ${entry.percent}% ${entry.name}`);
    }
    lines.push("");
    for (const [phase, w] of Object.entries<Json>(r.profile.windows ?? {})) {
      if (!["join", "place", "steady", "failover-streamLoss", "failover-silent"].includes(phase))
        continue;
      lines.push(`### ${phase}: ${fmtMs(w.totalMs)} profiled, ${w.idlePercent}% idle`);
      lines.push("");
      lines.push(
        `By area: ${(w.byArea ?? [])
          .slice(0, 8)
          .map((e: Json) => `${e.name} ${e.percent}%`)
          .join(", ")}`,
      );
      lines.push("");
      const inclusive = (w.topInclusive ?? []).filter(
        (e: Json) => !String(e.name).includes("node:internal"),
      );
      for (const entry of inclusive.slice(0, 10)) {
        lines.push(`- ${entry.percent}% ${entry.name}`);
      }
      lines.push("");
    }
  }
  if ((r.errors ?? []).length > 0) {
    lines.push("## Errors");
    lines.push("");
    for (const error of r.errors) lines.push(`- ${error.bench}: ${error.message}`);
    lines.push("");
  }
  return `${lines.join("\n")}\n`;
}
