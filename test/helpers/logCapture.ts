import { appendFileSync, existsSync, mkdirSync } from "node:fs";
import { cp, readdir, stat } from "node:fs/promises";
import * as path from "node:path";

/**
 * Every log line a test run produces is kept, so that the run can prove no token or
 * private key ever reached a log (NFR-S1): processes' stderr (their JSON logs) and the
 * log files `cloudless up` writes are copied here, and every token a test issues and
 * every secret value it creates is recorded. test/globalSetup.ts checks them all when the run ends.
 */
const captureDir = process.env.CLOUDLESS_TEST_LOG_DIR;

function ensureDir(): string | undefined {
  if (!captureDir) return undefined;
  if (!existsSync(captureDir)) mkdirSync(captureDir, { recursive: true, mode: 0o700 });
  return captureDir;
}

let sequence = 0;

/** A file to append one process's log output to. */
export function captureFile(label: string): string | undefined {
  const dir = ensureDir();
  if (!dir) return undefined;
  sequence += 1;
  const safe = label.replace(/[^a-zA-Z0-9_.-]+/g, "_").slice(0, 80);
  return path.join(dir, `${process.pid}-${sequence}-${safe}.log`);
}

export function appendCapture(file: string | undefined, text: string): void {
  if (file) appendFileSync(file, text);
}

const tokenPattern = /CL1::[0-9a-f]{64}::[a-z0-9]{10}\.[A-Za-z0-9_-]+/g;

/** Records every bootstrap token found in a command's output, to be searched for later. */
export function recordTokensIn(text: string): void {
  const dir = ensureDir();
  if (!dir) return;
  for (const match of text.match(tokenPattern) ?? []) {
    appendFileSync(path.join(dir, "issued-tokens.txt"), `${match}\n`);
  }
}

/**
 * Records replica tokens (ADR 0058) a test was issued: the run's log audit then proves
 * none reached a log (their signatures are searched for, like bootstrap token secrets).
 */
export function recordReplicaTokens(tokens: readonly string[]): void {
  const dir = ensureDir();
  if (!dir) return;
  for (const token of tokens)
    appendFileSync(
      path.join(dir, "issued-tokens.txt"),
      `${token}
`,
    );
}

/**
 * Shorter values could match log text by chance; every value the secrets tests create is
 * longer (REQ-063).
 */
const secretValueMinChars = 12;

/**
 * Records the values a command gives with `--from-literal KEY=VALUE` (a secret's value), so
 * the run's log audit proves none reached a log (REQ-063, NFR-S1).
 */
export function recordSecretValuesIn(args: readonly string[]): void {
  const dir = ensureDir();
  if (!dir) return;
  args.forEach((arg, index) => {
    if (args[index - 1] !== "--from-literal") return;
    const value = arg.slice(arg.indexOf("=") + 1);
    if (arg.includes("=") && value.length >= secretValueMinChars && !value.includes("\n")) {
      appendFileSync(path.join(dir, "secret-values.txt"), `${value}\n`);
    }
  });
}

/** Copies log files under a test's temp dir (e.g. DATA/logs of `cloudless up`) before it is removed. */
export async function archiveLogFiles(root: string): Promise<void> {
  const dir = ensureDir();
  if (!dir) return;
  const walk = async (current: string, depth: number): Promise<void> => {
    if (depth > 4) return;
    const entries = await readdir(current, { withFileTypes: true }).catch(() => []);
    for (const entry of entries) {
      const full = path.join(current, entry.name);
      if (entry.isDirectory()) await walk(full, depth + 1);
      else if (entry.isFile() && entry.name.endsWith(".log") && !full.includes("/replicas/")) {
        const size = (await stat(full).catch(() => undefined))?.size ?? 0;
        if (size > 0 && size < 50 * 1024 * 1024) {
          sequence += 1;
          await cp(full, path.join(dir, `${process.pid}-${sequence}-archived-${entry.name}`)).catch(
            () => undefined,
          );
        }
      }
    }
  };
  await walk(root, 0);
}
