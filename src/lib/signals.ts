/**
 * Stop signals of the long-running commands (`up`, `coordinator`, `agent`), ADR 0028.
 *
 * - The first SIGINT or SIGTERM (or a stop the program asks for itself, e.g. an agent
 *   whose parent is gone) starts the graceful stop: `requested` resolves.
 * - A second one, of either kind, while it runs asks for a faster stop: `hurry` aborts.
 *   The stop still removes everything; it only stops waiting (replicas are killed
 *   without the rest of their grace period, acknowledgements are not awaited).
 * - Any later one is reported and otherwise ignored: the hurried stop has only bounded
 *   steps left, and exiting before them would leave behind exactly what the stop is
 *   removing. `kill -9` remains for an operator who wants to abandon the cleanup.
 *
 * The handlers stay installed until the process exits. Removing them after the first
 * signal (as the old waitForSignal did) let the next one — a terminal's Ctrl-C reaches
 * the whole process group, and `up` also sends its agent SIGTERM — take the default
 * action and end the process halfway through its stop.
 */

export type StopSignal = "SIGINT" | "SIGTERM";

export const stopSignals: readonly StopSignal[] = ["SIGINT", "SIGTERM"];

/** Where signals come from: the process, or an EventEmitter in a unit test. */
export interface SignalSource {
  on(event: StopSignal, listener: (signal: StopSignal) => void): unknown;
}

export interface StopRequests {
  /** Resolves with the reason of the first stop request (a signal name or the program's own). */
  readonly requested: Promise<string>;
  /** Aborted by the second stop signal: stop faster, but still stop everything. */
  readonly hurry: AbortSignal;
  /** True once a stop was requested. */
  readonly stopping: boolean;
  /** Asks for the graceful stop without a signal (same as a first signal; later calls do nothing). */
  request(reason: string): void;
}

export interface StopSignalOptions {
  /** Says what the second signal changes, e.g. "replicas are killed without their grace period". */
  hurryEffect: string;
  /** Writes one line for the operator (default: stderr; never throws). */
  notice?: (line: string) => void;
  source?: SignalSource;
  pid?: number;
}

/** Installs the stop-signal handlers once for this process (or `source`). */
export function handleStopSignals(options: StopSignalOptions): StopRequests {
  const notice = options.notice ?? writeStderrLine;
  const source: SignalSource = options.source ?? process;
  const pid = options.pid ?? process.pid;
  const hurry = new AbortController();
  let stopping = false;
  let resolveRequested!: (reason: string) => void;
  const requested = new Promise<string>((resolve) => {
    resolveRequested = resolve;
  });
  const request = (reason: string) => {
    if (stopping) return;
    stopping = true;
    resolveRequested(reason);
  };
  const onSignal = (signal: StopSignal) => {
    if (!stopping) {
      request(signal);
    } else if (!hurry.signal.aborted) {
      notice(`received ${signal} again: stopping faster (${options.hurryEffect})`);
      hurry.abort();
    } else {
      notice(
        `received ${signal} again: still stopping, as fast as it can; kill -9 ${pid} abandons the cleanup and leaves what is not stopped yet`,
      );
    }
  };
  for (const signal of stopSignals) source.on(signal, onSignal);
  return {
    requested,
    hurry: hurry.signal,
    get stopping() {
      return stopping;
    },
    request,
  };
}

/** One line on stderr; a closed stderr (EPIPE) is ignored, never thrown. */
function writeStderrLine(line: string): void {
  try {
    process.stderr.write(`${line}\n`);
  } catch {
    // Nobody reads stderr any more; the stop goes on regardless.
  }
}
