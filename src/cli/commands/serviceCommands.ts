import { toJson } from "@bufbuild/protobuf";
import type { Command } from "commander";
import { type Service, ServiceSchema } from "../../api/gen/cloudless/v1/service_pb.js";
import { connect, describeClientError } from "../clientCommand.js";
import { parseOutputFormat, printResult, renderTable } from "../output.js";
import { action, fail } from "../run.js";

function portsOf(service: Service): string {
  return service.ports.map((p) => `${p.name}:${p.port}/${p.protocol}`).join(",") || "-";
}

function readyCount(service: Service): string {
  return `${service.endpoints.filter((e) => e.ready && e.weight > 0).length}/${service.endpoints.length}`;
}

/** One line per endpoint and published port: where the replica listens on its node. */
function endpointRows(service: Service): string[][] {
  return service.endpoints.map((e) => [
    e.replicaId,
    e.node,
    e.zone || "-",
    e.ready ? "true" : "false",
    String(e.weight),
    String(e.revision),
    Object.entries(e.hostPorts)
      .sort(([a], [b]) => a.localeCompare(b))
      .map(([name, port]) => `${name}=${port}`)
      .join(","),
    // Local or mesh is the agent's view of the path, not the coordinator's.
    "-",
  ]);
}

export function registerServiceCommands(program: Command): void {
  const service = program
    .command("service")
    .alias("services")
    .description("services: stable names, virtual IPs and their endpoints (REQ-041)");

  service
    .command("list")
    .alias("ls")
    .description("list services with their virtual IP, ports and ready endpoints")
    .option("-n, --namespace <namespace>", "namespace", "default")
    .option("-A, --all-namespaces", "services of every namespace")
    .option("-o, --output <format>", "table, json or yaml")
    .action(
      action(async (options: { namespace: string; allNamespaces?: boolean; output?: string }) => {
        const format = parseOutputFormat(options.output);
        const { clients, server } = await connect(program.opts().config);
        const response = await clients.services
          .listServices({ namespace: options.allNamespaces ? "" : options.namespace })
          .catch((error: unknown) => Promise.reject(describeClientError(error, server)));
        printResult(
          format,
          response.services.map((s) => toJson(ServiceSchema, s)),
          {
            headers: ["NAMESPACE", "NAME", "VIP", "PORTS", "READY", "DNS NAME"],
            rows: response.services.map((s) => [
              s.namespace,
              s.name,
              s.vip || "<none>",
              portsOf(s),
              readyCount(s),
              s.dnsName,
            ]),
          },
        );
      }),
    );

  service
    .command("get")
    .argument("<name>", "service name")
    .description("show a service: VIP, DNS name, ports and every endpoint")
    .option("-n, --namespace <namespace>", "namespace", "default")
    .option("-o, --output <format>", "table, json or yaml")
    .action(
      action(async (name: string, options: { namespace: string; output?: string }) => {
        const format = parseOutputFormat(options.output);
        const { clients, server } = await connect(program.opts().config);
        const response = await clients.services
          .getService({ name, namespace: options.namespace })
          .catch((error: unknown) => Promise.reject(describeClientError(error, server)));
        const found = response.service;
        if (!found) fail(`service "${name}" not found`);
        if (format !== "table") {
          printResult(format, toJson(ServiceSchema, found), { headers: [], rows: [] });
          return;
        }
        const lines = [
          `Name:       ${found.name}`,
          `Namespace:  ${found.namespace}`,
          `DNS name:   ${found.dnsName}`,
          `VIP:        ${found.vip || "<none: no free address in the service range, see events>"}`,
          `Ports:      ${portsOf(found)}`,
          `Workloads:  ${found.workloads.join(", ")}`,
          `Endpoints:  ${readyCount(found)} ready`,
          "",
        ];
        process.stdout.write(`${lines.join("\n")}\n`);
        process.stdout.write(
          renderTable(
            ["REPLICA", "NODE", "ZONE", "READY", "WEIGHT", "REVISION", "HOST PORTS", "PATH"],
            endpointRows(found),
          ),
        );
      }),
    );
}
