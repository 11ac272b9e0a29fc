/**
 * A reader that goes away (`kaos train list | head -1`): Node ignores SIGPIPE,
 * so every later write to the pipe fails with EPIPE, which would surface as an
 * unhandled error with a stack. kaos ends the way a Unix tool killed by
 * SIGPIPE does instead (`git log | head -1`): silently, with status 141
 * (128 + SIGPIPE), as the shell reports it. A run in progress first cancels
 * its jobs, as on Ctrl-C, so that nothing keeps running unrecorded.
 */

/** 128 + SIGPIPE: what a shell reports for a program killed by a closed pipe (EXIT.brokenPipe in exit.ts). */
const EXIT_BROKEN_PIPE = 141;

const listeners = new Set<() => void>();
let closed = false;
/** Set once kaos wrote the last thing it prints on stdout. */
let finished = false;

/** True once stdout or stderr lost its reader. */
export function outputClosed(): boolean {
  return closed;
}

/**
 * Calls `listener` once if stdout or stderr loses its reader while it is
 * registered; while any listener is registered kaos does not exit at once but
 * lets it wind down. Returns the function that unregisters it.
 */
export function onOutputClosed(listener: () => void): () => void {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

/**
 * Writes what kaos prints last on stdout, a failure's JSON under --json. A
 * reader gone by then misses only a copy of what stderr told, so the
 * failure keeps its own exit status rather than 141, whenever the reader left.
 */
export function writeLastOnStdout(text: string): void {
  if (closed) return;
  finished = true;
  process.stdout.write(text);
}

/** EPIPE, or EIO from a terminal that hung up (its window closed, its ssh session dropped). */
function isLostReader(error: unknown, stream: NodeJS.WriteStream): boolean {
  const code = typeof error === "object" && error !== null ? (error as { code?: unknown }).code : undefined;
  return code === "EPIPE" || (code === "EIO" && stream.isTTY === true);
}

/** Installs the handlers on stdout and stderr; the command line calls it once at start. */
export function exitQuietlyOnClosedOutput(): void {
  const onError = (stream: NodeJS.WriteStream, error: unknown) => {
    if (!isLostReader(error, stream)) throw error;
    if (closed || finished) return;
    closed = true;
    process.exitCode = EXIT_BROKEN_PIPE;
    if (listeners.size === 0) process.exit(EXIT_BROKEN_PIPE);
    for (const listener of [...listeners]) listener();
  };
  whenOpened("stdout", (stream) => stream.on("error", (error) => onError(stream, error)));
  whenOpened("stderr", (stream) => stream.on("error", (error) => onError(stream, error)));
}

/**
 * Calls `install` with `process[name]` as soon as something opens it. Node makes
 * the stream on first use, and making one (a socket for a pipe) costs a start
 * that never writes there, such as a no-op `kaos up` on stdout.
 */
function whenOpened(name: "stdout" | "stderr", install: (stream: NodeJS.WriteStream) => void): void {
  const descriptor = Object.getOwnPropertyDescriptor(process, name);
  const open = descriptor?.get;
  if (descriptor === undefined || open === undefined || descriptor.configurable !== true) {
    install(process[name]);
    return;
  }
  Object.defineProperty(process, name, {
    configurable: true,
    enumerable: descriptor.enumerable,
    get(): NodeJS.WriteStream {
      const stream = open.call(process) as NodeJS.WriteStream;
      Object.defineProperty(process, name, descriptor);
      install(stream);
      return stream;
    },
  });
}
