import type { LogLine } from "./driver.js";
import { LineSplitter } from "./lineSplitter.js";

/**
 * Demultiplexes the Docker attach/logs stream format used when a container has no TTY:
 * each frame is an 8-byte header — stream type (0 stdin, 1 stdout, 2 stderr), three
 * zero bytes, a big-endian uint32 payload length — followed by the payload. Frames
 * can be split across chunks in any way, so the decoder buffers until a frame is whole.
 */
export class DockerStreamDemuxer {
  private buffer: Buffer = Buffer.alloc(0);
  private readonly splitters = {
    stdout: new LineSplitter("stdout"),
    stderr: new LineSplitter("stderr"),
  };

  /** Raw payload bytes per stream, for callers that want output rather than lines. */
  push(chunk: Uint8Array): Array<{ stream: LogLine["stream"]; payload: Buffer }> {
    this.buffer =
      this.buffer.length === 0 ? Buffer.from(chunk) : Buffer.concat([this.buffer, chunk]);
    const frames: Array<{ stream: LogLine["stream"]; payload: Buffer }> = [];
    while (this.buffer.length >= 8) {
      const type = this.buffer[0];
      const size = this.buffer.readUInt32BE(4);
      if (this.buffer.length < 8 + size) break;
      const payload = this.buffer.subarray(8, 8 + size);
      this.buffer = this.buffer.subarray(8 + size);
      // Type 0 (stdin echo) is never requested; anything unknown is treated as stdout
      // rather than dropped, so no output is lost if an engine deviates.
      frames.push({ stream: type === 2 ? "stderr" : "stdout", payload });
    }
    return frames;
  }

  pushLines(chunk: Uint8Array): LogLine[] {
    const lines: LogLine[] = [];
    for (const frame of this.push(chunk)) {
      lines.push(...this.splitters[frame.stream].push(frame.payload));
    }
    return lines;
  }

  /** Unterminated last lines of both streams once the stream has ended. */
  flushLines(): LogLine[] {
    return [...this.splitters.stdout.flush(), ...this.splitters.stderr.flush()];
  }
}
