/**
 * Where the key-encryption keys (KEKs) of secrets live: never in the store (ADR 0052).
 *
 * - data dir (default, one coordinator): `DATA/secrets-kek/<id>.key`, each a 0600 file
 *   holding one base64 key, and `DATA/secrets-kek/active` naming the KEK new secrets use.
 *   The first use creates a key; `secret rotate-key` adds one and makes it active.
 * - a key file (`--secrets-key-file`, for several coordinators): one base64 key per line,
 *   the first line active, the others kept for decrypting until every secret is re-wrapped.
 *   Every coordinator reads the same file (copied by the operator), re-read on each use, so
 *   adding or removing a line needs no restart.
 * - an environment variable (`CLOUDLESS_SECRETS_KEY`): base64 keys separated by commas,
 *   the first active; read once at start.
 *
 * A KEK's id is derived from the key itself (`kek-` and 16 hex digits of its SHA-256), so
 * every coordinator names the same key the same way whichever source holds it.
 */
import { createHash } from "node:crypto";
import { mkdir, readdir, readFile, rm, stat } from "node:fs/promises";
import * as path from "node:path";
import { CloudlessError } from "../../api/errors.js";
import { writeSecretFile } from "../../lib/atomicFile.js";
import { type Kek, keyBytes } from "./envelope.js";

export type KeyRingSource =
  | { kind: "dataDir"; dir: string }
  | { kind: "file"; file: string }
  | { kind: "env"; variable: string; value: string };

/** The environment variable that may hold the KEKs (base64, comma-separated, first active). */
export const secretsKeyEnvVariable = "CLOUDLESS_SECRETS_KEY";

/** The `--secrets-key-file` a coordinator reads at most: far above a few dozen key lines. */
const keyFileMaxBytes = 64 * 1024;
/** Keys one ring holds at most: each old key is kept only until a rotation finishes. */
const keysPerRingMax = 32;

const kekFilePattern = /^(kek-[0-9a-f]{16})\.key$/;

export function kekIdOf(key: Buffer): string {
  return `kek-${createHash("sha256").update(key).digest("hex").slice(0, 16)}`;
}

/** Parses base64 keys, one per entry; errors name the entry's position, never its text. */
export function parseKeys(entries: string[], where: string): Kek[] {
  const keys: Kek[] = [];
  entries.forEach((entry, index) => {
    const text = entry.trim();
    if (text === "" || text.startsWith("#")) return;
    const key = Buffer.from(text, "base64");
    if (key.length !== keyBytes || !/^[A-Za-z0-9+/=_-]+$/.test(text)) {
      throw CloudlessError.invalid(
        `${where}: entry ${index + 1} is not a base64 ${keyBytes}-byte key; generate one with \`openssl rand -base64 32\``,
      );
    }
    keys.push({ id: kekIdOf(key), key });
  });
  if (keys.length > keysPerRingMax) {
    throw CloudlessError.invalid(
      `${where}: holds ${keys.length} keys, at most ${keysPerRingMax}; remove the ones no secret uses (after \`cloudless secret rotate-key\`)`,
    );
  }
  return keys;
}

export class KeyRing {
  constructor(
    readonly source: KeyRingSource,
    private readonly secureRandom: (size: number) => Buffer,
    /**
     * The store is shared (etcd): keys in one coordinator's data dir would seal secrets the
     * other coordinators cannot open, so the data dir is refused as a source.
     */
    private readonly sharedStore = false,
  ) {}

  /** Said in `rotate-key`'s answer and the docs: where the keys are. */
  describe(): string {
    switch (this.source.kind) {
      case "dataDir":
        return `the coordinator's data dir (${this.source.dir})`;
      case "file":
        return `the key file ${this.source.file}`;
      case "env":
        return `the environment variable ${this.source.variable}`;
    }
  }

  /** Whether this ring can create and remove keys itself (only the data dir). */
  get managesKeys(): boolean {
    return this.source.kind === "dataDir" && !this.sharedStore;
  }

  /** Every key, the active one first. */
  async keys(): Promise<Kek[]> {
    const source = this.source;
    switch (source.kind) {
      case "env":
        return parseKeys(source.value.split(","), source.variable);
      case "file": {
        const size = await stat(source.file).then(
          (info) => info.size,
          (error: NodeJS.ErrnoException) => {
            throw CloudlessError.failedPrecondition(
              `secrets key file ${source.file} cannot be read (${error.code ?? error.message}); give every coordinator the same file with --secrets-key-file`,
            );
          },
        );
        if (size > keyFileMaxBytes) {
          throw CloudlessError.failedPrecondition(
            `secrets key file ${source.file} is larger than ${keyFileMaxBytes} bytes; it should hold one base64 key per line`,
          );
        }
        return parseKeys((await readFile(source.file, "utf8")).split("\n"), source.file);
      }
      case "dataDir":
        if (this.sharedStore) {
          throw CloudlessError.failedPrecondition(
            `secrets need the same keys on every coordinator of a shared (etcd) store: start each coordinator with --secrets-key-file (or ${secretsKeyEnvVariable}); see docs/operations/security.md`,
          );
        }
        return this.dataDirKeys(source.dir);
    }
  }

  /** The KEK new secrets are wrapped with; the data dir creates one on first use. */
  async active(): Promise<Kek> {
    const keys = await this.keys();
    const first = keys[0];
    if (first) return first;
    if (this.source.kind !== "dataDir") {
      throw CloudlessError.failedPrecondition(
        `${this.describe()} holds no key; put a base64 32-byte key in it (\`openssl rand -base64 32\`)`,
      );
    }
    return this.createKey();
  }

  async find(id: string): Promise<Kek | undefined> {
    return (await this.keys()).find((kek) => kek.id === id);
  }

  /** A new random KEK, written 0600 and made active (data dir only). */
  async createKey(): Promise<Kek> {
    if (this.source.kind !== "dataDir") {
      throw CloudlessError.failedPrecondition(
        `the keys are in ${this.describe()}: add a new first line on every coordinator, then run \`cloudless secret rotate-key\``,
      );
    }
    const dir = this.source.dir;
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const key = this.secureRandom(keyBytes);
    const kek: Kek = { id: kekIdOf(key), key };
    // The key file first, then the pointer: a crash between leaves an unused key, never an
    // active id without its key.
    await writeSecretFile(path.join(dir, `${kek.id}.key`), `${key.toString("base64")}\n`);
    await writeSecretFile(path.join(dir, "active"), `${kek.id}\n`);
    return kek;
  }

  /** Deletes every key but `keepId` (data dir only); returns the ids removed. */
  async removeAllBut(keepId: string): Promise<string[]> {
    if (this.source.kind !== "dataDir") return [];
    const removed: string[] = [];
    for (const kek of await this.keys()) {
      if (kek.id === keepId) continue;
      await rm(path.join(this.source.dir, `${kek.id}.key`), { force: true });
      removed.push(kek.id);
    }
    return removed;
  }

  private async dataDirKeys(dir: string): Promise<Kek[]> {
    const names = await readdir(dir).catch((error: NodeJS.ErrnoException) => {
      if (error.code === "ENOENT") return [] as string[];
      throw error;
    });
    const activeId = (await readFile(path.join(dir, "active"), "utf8").catch(() => "")).trim();
    const keys: Kek[] = [];
    for (const name of names) {
      const id = kekFilePattern.exec(name)?.[1];
      if (!id) continue;
      const [kek] = parseKeys([await readFile(path.join(dir, name), "utf8")], path.join(dir, name));
      if (!kek || kek.id !== id) {
        throw CloudlessError.failedPrecondition(
          `${path.join(dir, name)} does not hold the key its name says; restore it from a backup`,
        );
      }
      keys.push(kek);
    }
    if (keys.length > keysPerRingMax) {
      throw CloudlessError.failedPrecondition(
        `${dir} holds ${keys.length} keys, at most ${keysPerRingMax}; run \`cloudless secret rotate-key --remove-old\``,
      );
    }
    const active = keys.find((kek) => kek.id === activeId);
    if (keys.length > 0 && !active) {
      throw CloudlessError.failedPrecondition(
        `${path.join(dir, "active")} does not name a key in ${dir}; restore the directory from a backup`,
      );
    }
    return active ? [active, ...keys.filter((kek) => kek !== active)] : keys;
  }
}
