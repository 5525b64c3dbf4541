import { describe, expect, it } from "vitest";
import { DockerStreamDemuxer } from "./dockerStream.js";
import { LineSplitter } from "./lineSplitter.js";

function frame(type: number, text: string | Buffer): Buffer {
  const payload = typeof text === "string" ? Buffer.from(text) : text;
  const header = Buffer.alloc(8);
  header[0] = type;
  header.writeUInt32BE(payload.length, 4);
  return Buffer.concat([header, payload]);
}

describe("DockerStreamDemuxer", () => {
  it("splits stdout and stderr frames into lines", () => {
    const demuxer = new DockerStreamDemuxer();
    const lines = demuxer.pushLines(
      Buffer.concat([frame(1, "one\ntwo\n"), frame(2, "oops\n"), frame(1, "three\n")]),
    );
    expect(lines).toEqual([
      { stream: "stdout", line: "one" },
      { stream: "stdout", line: "two" },
      { stream: "stderr", line: "oops" },
      { stream: "stdout", line: "three" },
    ]);
    expect(demuxer.flushLines()).toEqual([]);
  });

  it("reassembles frames and lines split across chunks at any byte", () => {
    const whole = Buffer.concat([
      frame(1, "hello wor"),
      frame(2, "err\n"),
      frame(1, "ld\nnext"),
      frame(1, Buffer.from("é\n", "utf8")),
    ]);
    for (let cut = 1; cut < whole.length; cut += 1) {
      const demuxer = new DockerStreamDemuxer();
      const lines = [
        ...demuxer.pushLines(whole.subarray(0, cut)),
        ...demuxer.pushLines(whole.subarray(cut)),
        ...demuxer.flushLines(),
      ];
      expect(lines).toEqual([
        { stream: "stderr", line: "err" },
        { stream: "stdout", line: "hello world" },
        { stream: "stdout", line: "nexté" },
      ]);
    }
  });

  it("emits an unterminated last line on flush", () => {
    const demuxer = new DockerStreamDemuxer();
    expect(demuxer.pushLines(frame(1, "partial"))).toEqual([]);
    expect(demuxer.flushLines()).toEqual([{ stream: "stdout", line: "partial" }]);
  });
});

describe("LineSplitter", () => {
  it("drops CR of CRLF line ends and keeps empty lines", () => {
    const splitter = new LineSplitter("stdout");
    expect(splitter.push(Buffer.from("a\r\n\nb"))).toEqual([
      { stream: "stdout", line: "a" },
      { stream: "stdout", line: "" },
    ]);
    expect(splitter.flush()).toEqual([{ stream: "stdout", line: "b" }]);
    expect(splitter.flush()).toEqual([]);
  });
});
