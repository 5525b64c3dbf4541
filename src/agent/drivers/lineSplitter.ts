import type { LogLine } from "./driver.js";

/**
 * Turns chunks of one stream into lines. Keeps the unterminated tail until the next
 * chunk (or flush) so a line split across two reads or frames comes out whole; a
 * trailing "\r" is dropped so CRLF output reads like LF output.
 */
export class LineSplitter {
  private pending = "";
  private readonly decoder = new TextDecoder("utf-8");

  constructor(readonly stream: LogLine["stream"]) {}

  push(chunk: Uint8Array): LogLine[] {
    this.pending += this.decoder.decode(chunk, { stream: true });
    const parts = this.pending.split("\n");
    this.pending = parts.pop() ?? "";
    return parts.map((line) => ({ stream: this.stream, line: stripCr(line) }));
  }

  /** Emits the unterminated tail, if any (the stream ended without a final newline). */
  flush(): LogLine[] {
    this.pending += this.decoder.decode();
    const rest = this.pending;
    this.pending = "";
    return rest.length > 0 ? [{ stream: this.stream, line: stripCr(rest) }] : [];
  }
}

function stripCr(line: string): string {
  return line.endsWith("\r") ? line.slice(0, -1) : line;
}
