/**
 * How the CLI process ends. Into a pipe, Node writes what the kernel's pipe buffer
 * (64 KiB on Linux) cannot take at once later, from the event loop; `process.exit()`
 * drops whatever is still queued, so `cloudless workload list -o json | jq` once got
 * the first 64 KiB and a success code. Every exit therefore waits until stdout and
 * stderr have handed all their bytes to the kernel. A reader that goes away early
 * (`| head -c 100`) ends the command quietly, as it ends `cat`.
 */

/**
 * The exit code when the reader of our output closed it: 128 + SIGPIPE (13), what a
 * shell reports for `cat` or `kubectl` ended by a closed pipe (`set -o pipefail`).
 */
export const closedOutputExitCode = 141;

/**
 * Whether a failed stdout or stderr ends the process. A daemon (agent, coordinator, up)
 * outlives the reader of its output: `up` killed with -9 takes its agent's stderr with
 * it, and the agent must go on supervising its replicas (its logger drops the lines and
 * counts them).
 */
let outputErrorsEndTheProcess = true;

/** For long-running commands: a closed or failed stdout/stderr no longer ends the process. */
export function keepRunningWhenOutputCloses(): void {
  outputErrorsEndTheProcess = false;
}

/**
 * Ends the process when stdout or stderr fails, instead of an unhandled 'error' event
 * with a stack trace: quietly when the reader closed it (EPIPE), with one line and
 * exit code 1 otherwise (a full disk). Installed once, before any command runs.
 */
export function endQuietlyWhenOutputCloses(): void {
  for (const stream of [process.stdout, process.stderr]) {
    stream.on("error", (error: NodeJS.ErrnoException) => {
      if (outputErrorsEndTheProcess) exitForOutputError(stream, error);
    });
  }
}

/** Exits with `code` once everything written to stdout and stderr has left the process. */
export async function exitAfterOutput(code: number): Promise<never> {
  const [stdoutError, stderrError] = await Promise.all([
    drained(process.stdout),
    drained(process.stderr),
  ]);
  if (stdoutError) exitForOutputError(process.stdout, stdoutError);
  if (stderrError) exitForOutputError(process.stderr, stderrError);
  process.exit(code);
}

function exitForOutputError(stream: NodeJS.WriteStream, error: NodeJS.ErrnoException): never {
  if (error.code === "EPIPE") process.exit(closedOutputExitCode);
  if (stream === process.stdout && !process.stderr.errored) {
    process.stderr.write(`error: writing the output failed: ${error.message}\n`);
  }
  process.exit(1);
}

/**
 * Resolves when every byte written to `stream` so far has been handed to the kernel,
 * with the error if a write failed: writes complete in order, so an empty write's
 * callback runs after all earlier ones. No timer: a reader that never reads holds the
 * command, as it holds any program.
 */
function drained(stream: NodeJS.WriteStream): Promise<NodeJS.ErrnoException | undefined> {
  // A failed write sets `errored` at once but emits 'error' only on a later tick.
  if (stream.errored || stream.destroyed) {
    return Promise.resolve((stream.errored as NodeJS.ErrnoException | null) ?? undefined);
  }
  if (stream.writableLength === 0) return Promise.resolve(undefined);
  return new Promise((resolve) => {
    stream.write("", (error) => resolve(error ?? undefined));
  });
}
