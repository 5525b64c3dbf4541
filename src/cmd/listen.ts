/**
 * Where the daemons listen unless told (ADR 0037): `up` is a cluster for this machine,
 * so it listens on loopback; `coordinator` exists to serve agents on other machines,
 * so it listens on every interface, like a k3s server.
 */
export const defaultListenHost = { up: "127.0.0.1", coordinator: "0.0.0.0" } as const;

/** True for an address only this machine can reach. */
export function isLoopback(host: string): boolean {
  return host === "localhost" || host === "::1" || /^127\.\d+\.\d+\.\d+$/.test(host);
}

/** The lines `up` prints about joining other machines, true to where it listens. */
export function joinInstructions(host: string, port: number): string[] {
  const join = [
    "  ./bin/cloudless token create --ttl 1h",
    `  cloudless agent --join https://<this-host>:${port} --token <token>`,
  ];
  if (!isLoopback(host)) return ["Join another machine:", ...join];
  return [
    `Join another machine: this cluster listens on ${host} only; restart with --host 0.0.0.0`,
    "(every interface) or --host <this machine's address> to accept other machines, then:",
    ...join,
  ];
}
