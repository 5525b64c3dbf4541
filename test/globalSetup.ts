import { mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";

/**
 * Keeps every log line of the test run (see helpers/logCapture.ts) and, when the run
 * ends, proves that no bootstrap token secret, no secret's value (REQ-063) and no private
 * key reached any of them (NFR-S1, REQ-070). A leak fails the run.
 */
let logDir: string;
/** base64url of `{"alg":"EdDSA","kid":`, how every replica token begins. */
const replicaTokenHeader = "eyJhbGciOiJFZERTQSIsImtpZCI6";

export async function setup(): Promise<void> {
  logDir = await mkdtemp(path.join(tmpdir(), "cloudless-test-logs-"));
  process.env.CLOUDLESS_TEST_LOG_DIR = logDir;
}

export async function teardown(): Promise<void> {
  const files = (await readdir(logDir)).filter((name) => name.endsWith(".log"));
  const tokens = (await readFile(path.join(logDir, "issued-tokens.txt"), "utf8").catch(() => ""))
    .split("\n")
    .filter(Boolean);
  const secrets = [...new Set(tokens.map((token) => token.slice(token.lastIndexOf(".") + 1)))];
  const secretValues = [
    ...new Set(
      (await readFile(path.join(logDir, "secret-values.txt"), "utf8").catch(() => ""))
        .split("\n")
        .filter(Boolean),
    ),
  ];
  const leaks: string[] = [];
  let lines = 0;
  for (const file of files) {
    const text = await readFile(path.join(logDir, file), "utf8");
    lines += text.split("\n").length;
    for (const secret of secrets) {
      if (text.includes(secret)) leaks.push(`${file}: a bootstrap token secret`);
    }
    for (const value of secretValues) {
      if (text.includes(value)) leaks.push(`${file}: a secret's value (REQ-063)`);
    }
    if (/-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(text)) leaks.push(`${file}: a private key`);
    // Any replica token (ADR 0058), the agents' own included: its header is always this.
    if (text.includes(replicaTokenHeader)) leaks.push(`${file}: a replica token (REQ-063)`);
  }
  console.log(
    `NFR-S1 log audit: ${files.length} log files, ${lines} lines, ${secrets.length} issued tokens and ${secretValues.length} secret values checked: ${leaks.length === 0 ? "no token, secret value or private key found" : `${leaks.length} LEAKS`}`,
  );
  if (leaks.length > 0) {
    // Vitest reports a throwing teardown but still exits 0; the exit code must say it.
    process.exitCode = 1;
    throw new Error(`secrets reached the logs (kept in ${logDir}):\n${leaks.join("\n")}`);
  }
  // CLOUDLESS_KEEP_TEST_LOGS=1 keeps every process's log of the run, to read a failure.
  if (process.env.CLOUDLESS_KEEP_TEST_LOGS === "1") console.log(`test logs kept in ${logDir}`);
  else await rm(logDir, { recursive: true, force: true });
}
