/**
 * `--from-literal KEY=VALUE` and `--from-file [KEY=]PATH` (repeatable), shared by `cloudless
 * secret` and `cloudless config`: the keys and values of a key/value object, read and
 * checked against the kind's limits (api/keyValueData.ts) before anything is sent. Errors
 * never repeat a value: a literal may be a password.
 */
import { open } from "node:fs/promises";
import * as path from "node:path";
import { type KeyValueLimits, validateKeyValueData } from "../api/keyValueData.js";
import { formatBytes, limitRef } from "../api/limits.js";
import { fail } from "./run.js";

export interface KeyValueFlags {
  fromLiteral: string[];
  fromFile: string[];
}

/** Reads a file of at most the kind's value bound, refusing a larger one before reading it all. */
async function readValueFile(file: string, flag: string, bounds: KeyValueLimits): Promise<Buffer> {
  const { max, limit } = bounds.valueBytes;
  const tooLarge = () =>
    fail(`${flag} ${file}: larger than ${formatBytes(max)} ${limitRef(limit)}`);
  const handle = await open(file, "r").catch((error: NodeJS.ErrnoException) =>
    fail(`${flag} ${file}: cannot read it (${error.code ?? error.message})`),
  );
  try {
    const info = await handle.stat();
    if (!info.isFile()) fail(`${flag} ${file}: not a regular file`);
    if (info.size > max) tooLarge();
    // One byte more than allowed: a file that grew since the stat is still caught.
    const buffer = Buffer.alloc(max + 1);
    const { bytesRead } = await handle.read(buffer, 0, buffer.length, 0);
    if (bytesRead > max) tooLarge();
    return buffer.subarray(0, bytesRead);
  } finally {
    await handle.close();
  }
}

/** The keys and values of --from-literal KEY=VALUE and --from-file [KEY=]PATH, checked. */
export async function keyValueDataFromFlags(
  flags: KeyValueFlags,
  bounds: KeyValueLimits,
): Promise<Map<string, Uint8Array>> {
  const data = new Map<string, Uint8Array>();
  const add = (key: string, value: Uint8Array, flag: string) => {
    if (data.has(key)) fail(`${flag}: key "${key}" is given twice`);
    data.set(key, value);
    // Checked as it grows, so a hundred large files are refused before all are read.
    if (data.size > bounds.keys.max) validateKeyValueData(data, bounds);
  };
  for (const literal of flags.fromLiteral) {
    const index = literal.indexOf("=");
    // The message never repeats the text: it may be the value itself.
    if (index <= 0) fail("--from-literal: expected KEY=VALUE, e.g. --from-literal password=…");
    add(literal.slice(0, index), Buffer.from(literal.slice(index + 1), "utf8"), "--from-literal");
  }
  for (const spec of flags.fromFile) {
    const index = spec.indexOf("=");
    const key = index > 0 ? spec.slice(0, index) : path.basename(spec);
    const file = index > 0 ? spec.slice(index + 1) : spec;
    add(key, await readValueFile(file, "--from-file", bounds), "--from-file");
  }
  validateKeyValueData(data, bounds);
  return data;
}
