/**
 * `kaos watch`: `kaos up` once, then again whenever a bundle, manifest,
 * hyperparams file, the config or the stack file (or a module of the
 * project's that one of them imports) changes, after the edits settle. Only what the plan says runs, exactly as in `kaos up`; the writer
 * lock of the stack is held for the whole session, so a concurrent `kaos up`
 * on the same stack gets the usual STATE_LOCKED message.
 *
 * The state machine (WatchMachine below; every transition is in `dispatch`):
 *
 *     idle       --change-->    debouncing   (arm the quiet timer)
 *     debouncing --change-->    debouncing   (re-arm the timer)
 *     debouncing --quiet-->     planning     (start a run)
 *     planning   --planned-->   running      (the plan is made: jobs start, the run is recorded)
 *     planning   --change-->    planning-queued (arm the timer)
 *     running    --change-->    queued       (arm the timer)
 *     queued     --change-->    queued       (re-arm the timer; likewise planning-queued)
 *     queued     --quiet-->     queued       (restart mode: plan again and cancel the
 *                                             running jobs whose key left the plan;
 *                                             queue mode: say so, the jobs finish;
 *                                             likewise planning-queued)
 *     planning-queued --planned--> queued
 *     running    --run-ended--> idle         (likewise planning: nothing to run)
 *     queued     --run-ended--> planning     (start the queued run), or debouncing
 *                                            when edits have not settled yet (likewise
 *                                            planning-queued)
 *     idle       --start-->     planning     (the first run)
 *     planning   --quit-->      stopping     (drop the plan and exit 130 at once: nothing
 *                                             ran, nothing is recorded; likewise
 *                                             planning-queued)
 *     any other  --quit-->      stopping     (cancel the running jobs, record them, exit 0)
 *     stopping   --quit-->      exit 130 at once
 *
 * A run reloads the config first when the config, stack or hyperparams file
 * changed (or the config was invalid), then applies. Jobs whose inputs did not
 * change keep running through a restart; the next run starts when the current
 * one returns and skips whatever already succeeded. After a failed run, a rerun
 * whose only work is what failed, with identical keys, is not launched. After
 * the first run, a change that leaves nothing to run records no run.
 *
 * Never a reason to rerun: anything under the project's `.kaos/`; `.git`,
 * `node_modules` and `__pycache__` inside a bundle; what a bundle's
 * `.kaosignore` excludes; the locks kaos writes beside manifests; editor swap,
 * backup and temporary files (see EDITOR_TEMP). Directory creation alone is
 * not a change either (an empty directory adds nothing to a tree hash).
 *
 * Output goes to stderr, like `kaos up`'s progress. Without a terminal these
 * plain lines are printed and stay stable (scripts and tests match on them):
 *
 *     watching N paths in ROOT (debounce D ms, on change: restart|queue, events|polling every P ms); q then Enter or Ctrl-C quits
 *     initial run: S stages and J jobs to run, K skipped
 *     initial run: nothing to run, every job is up to date
 *     change detected: S stages and J jobs to run, K skipped (PATH[ and N more])
 *     change detected: nothing to run, every job is up to date (PATH[ and N more])
 *     <the job and stage lines of `kaos up`>
 *     run ID succeeded: N ran, M reused
 *     run ID failed: REASON
 *     run ID restarted: N jobs cancelled because their inputs changed
 *     run ID cancelled
 *     change during the run: cancelling N jobs whose inputs changed, M keep running; rerun queued
 *     change during the run: rerun queued
 *     unchanged since the failure; waiting for an edit
 *     error: MESSAGE     (then `hint: HINT` when there is one: what `kaos up` prints)
 *     config invalid; waiting for a fix
 *     config reloaded
 *     config reloaded; resuming
 *     watching N paths in ROOT      (after a reload changed the watched paths)
 *     waiting for changes
 *     stopping: cancelling running jobs   (or `stopping` when nothing runs)
 *     stopped
 *     interrupted: stopped before anything ran   (quit while planning; exit 130)
 *
 * PATH is relative to the project root. S counts the ingest and build stages
 * that run; J and K the train jobs that run and are skipped.
 *
 * On a terminal the same lines scroll above one status line redrawn in place
 * (`watching 3 paths — last run succeeded`, `running 2 of 12 (3 done)`,
 * `failed: REASON — waiting for an edit`), and a `q` keypress quits. Ctrl-C,
 * SIGTERM and `q` cancel the running jobs (recorded `cancelled`), release the
 * lock and exit 0; a second Ctrl-C exits at once with 130, killing the jobs
 * still running (see spawnLogged). While a run is still planning, nothing has
 * started: the first Ctrl-C stops the plan (its hashing threads with it),
 * prints `interrupted: stopped before anything ran`, releases the lock and
 * exits 130 at once, as `kaos up` does.
 */
import { existsSync, type Stats } from "node:fs";
import { basename, dirname, relative, resolve } from "node:path";
import { findConfig } from "../../core/config.js";
import { apply, loadProject, openSession, plan as planSession, runnerSession, type RunnerSession } from "../../core/engine.js";
import { KaosError, describeError, isKaosError } from "../../core/errors.js";
import { colors, isInteractive } from "../output.js";
import { displayLine, displayMessage, displayText, plural } from "../../core/format.js";
import { createBackend } from "../../backends/index.js";
import type { JobRunner } from "../../core/backend.js";
import type { JobRecord } from "../../core/state.js";
import type { ResolvedConfig, ResolvedStack } from "../../core/types.js";

export interface WatchCommandOptions {
  cwd: string;
  configPath?: string | undefined;
  stackName?: string | undefined;
  /** Quiet time in ms; default the config's `watch.debounceMs`. */
  debounce?: number | undefined;
  onChange?: "restart" | "queue" | undefined;
  poll?: boolean | undefined;
  pollInterval?: number | undefined;
  /** Rerun everything on the first run. */
  force?: boolean | undefined;
}
import { WatchMachine } from "./machine.js";
import { failedItems, failureReason, jobItem, planSummary, runItems, wantedKeys } from "./outcomes.js";
import { isIgnoredPath, loadRules, watchTargets, type WatchTargets } from "./targets.js";
import { LinkWatcher } from "./links.js";
import { Terminal, WatchReporter } from "./terminal.js";
import { WATCH_DEFAULTS } from "../../core/defaults.js";
import { stateDirOf } from "../../core/layout.js";
import { setupReporter, startMonitor, type MonitorServer } from "../../core/monitor.js";
import { exitAtOnce, exitWhilePlanning, failureLines, onStopRequest, type StopReason } from "../exit.js";

interface CurrentRun {
  reporter: WatchReporter;
  backend: JobRunner;
  /** Keys the latest plan wants, once an edit came in during this run. */
  wanted: Set<string> | undefined;
  cancelledForRestart: number;
  announcedQueue: boolean;
}

const STALE_REASON = "cancelled: its inputs changed while it ran; kaos watch reruns it";

class WatchSession {
  private readonly c = colors(process.stderr);
  private readonly terminal = new Terminal(isInteractive(process.stderr));
  private readonly machine: WatchMachine;
  private readonly quit = new AbortController();
  private readonly configFile: string;
  private session: RunnerSession | undefined;
  private readonly baseSession: RunnerSession;
  private targets: WatchTargets;
  /** The last config and stack that loaded, whose paths are watched. */
  private loaded: { config: ResolvedConfig; stack: ResolvedStack } | undefined;
  private watcher: import("chokidar").FSWatcher | undefined;
  private readonly links = new LinkWatcher((link) => this.onLinkRetargeted(link));
  private configDirty = false;
  private configError: string | undefined;
  private pending: string[] = [];
  private firstRun = true;
  private failed = new Set<string>();
  private lastOutcome = "nothing run yet";
  private current: CurrentRun | undefined;
  private readonly tasks = new Set<Promise<void>>();
  private checking = false;
  private checkAgain = false;
  private stopReason: StopReason | "quit" = "interrupted";
  private stopListening: (() => void) | undefined;
  private monitor: MonitorServer | undefined;
  private finished: (() => void) | undefined;

  constructor(
    private readonly options: WatchCommandOptions,
    loaded: { config: ResolvedConfig; stack: ResolvedStack } | undefined,
    configError: string | undefined,
    base: RunnerSession,
    configFile: string,
  ) {
    this.configFile = configFile;
    this.baseSession = base;
    this.session = loaded ? base : undefined;
    this.configError = configError;
    this.loaded = loaded;
    this.targets = watchTargets(loaded?.config, loaded?.stack, configFile, options.stackName);
    const watchConfig = loaded?.config.watch ?? WATCH_DEFAULTS;
    this.machine = new WatchMachine(
      {
        startRun: () => this.track(this.runCycle()),
        settledDuringRun: (mode) => {
          if (mode === "restart") this.track(this.restartCheck());
          else if (this.current !== undefined && !this.current.announcedQueue) {
            this.current.announcedQueue = true;
            this.print("change during the run: rerun queued");
          }
        },
        abandonPlan: () => this.abandonPlan(),
        stopRuns: () => this.stopRuns(),
        stopAtOnce: exitAtOnce,
        entered: () => this.drawStatus(),
      },
      options.debounce ?? watchConfig.debounceMs,
      options.onChange ?? watchConfig.onChange,
    );
  }

  private get stopping(): boolean {
    return this.machine.state === "stopping";
  }

  private track(task: Promise<void>): void {
    const wrapped = task.catch((error: unknown) => this.printError(error));
    this.tasks.add(wrapped);
    void wrapped.finally(() => this.tasks.delete(wrapped));
  }

  private print(text: string): void {
    this.terminal.line(text);
  }

  private printError(error: unknown): void {
    for (const line of failureLines(error, this.c)) this.print(line);
  }

  private drawStatus(): void {
    if (!this.terminal.interactive) return;
    const state = this.machine.state;
    let text: string;
    if (this.stopping) {
      text = this.c.yellow(this.current ? "stopping: cancelling running jobs" : "stopping");
    } else if (state === "planning" || state === "planning-queued" || state === "running" || state === "queued") {
      const counts = this.current?.reporter.counts();
      text = counts && counts.total > 0 ? `running ${counts.running} of ${counts.total} (${counts.done} done)` : "planning";
      if (state === "queued" || state === "planning-queued") text += " — rerun queued";
      text = this.c.cyan(text);
    } else if (state === "debouncing") {
      text = this.c.dim("change detected; waiting for edits to settle");
    } else if (this.configError !== undefined) {
      text = this.c.red(
        `failed: config invalid — fix ${displayText(relative(this.options.cwd, this.configFile) || this.configFile)} to resume`,
      );
    } else if (this.lastOutcome.startsWith("failed")) {
      text = this.c.red(`${this.lastOutcome} — waiting for an edit`);
    } else {
      text = `watching ${plural(this.targets.paths.length, "path")} — ${this.lastOutcome}`;
    }
    this.terminal.setStatus(`${text}  ${this.c.dim("(q to quit)")}`);
  }

  // ------------------------------------------------------------- watching

  private describeMode(): string {
    return this.options.poll ? `polling every ${this.options.pollInterval ?? 500} ms` : "events";
  }

  private async startWatcher(): Promise<void> {
    const { watch } = await import("chokidar");
    const interval = this.options.pollInterval ?? 500;
    const watcher = watch(this.targets.paths, {
      ignoreInitial: true,
      persistent: true,
      usePolling: this.options.poll === true,
      pollingInterval: interval,
      pollingBinaryInterval: interval,
      ignored: (path: string, stats?: Stats) => isIgnoredPath(this.targets, path, stats),
    });
    watcher.on("all", (event, path) => this.onFsEvent(event, path));
    watcher.on("error", (error) => this.print(`watch error: ${displayLine(describeError(error))}`));
    await new Promise<void>((done) => watcher.once("ready", () => done()));
    this.watcher = watcher;
    this.links.update(this.targets.paths);
  }

  /** A watched symlink now points elsewhere: the watcher follows it afresh, and that is an edit. */
  private onLinkRetargeted(link: string): void {
    if (this.stopping || this.watcher === undefined) return;
    this.watcher.unwatch(link);
    this.watcher.add(link);
    this.onFsEvent("change", link);
  }

  /**
   * Serves the file system monitor, so that `kaos plan` and `kaos up` run
   * elsewhere ask it what changed instead of walking every bundle. Not when
   * polling: events there come late or not at all.
   */
  private async startMonitor(): Promise<MonitorServer | undefined> {
    if (this.options.poll === true) return undefined;
    const stateDir = stateDirOf(this.baseSession.state.root);
    const started = await startMonitor(
      stateDir,
      setupReporter(this.options.cwd, (line) => this.print(displayLine(line))),
    );
    if (started.server === undefined) {
      this.print(`file system monitor not started: ${displayLine(started.reason)}`);
      return undefined;
    }
    this.print(`file system monitor ready: plans read changes from ${displayText(relative(this.options.cwd, started.server.socketPath))}`);
    return started.server;
  }

  private onFsEvent(event: string, path: string): void {
    if (this.stopping) return;
    const absolute = resolve(path);
    if (this.targets.configFiles.has(absolute)) this.configDirty = true;
    if (basename(absolute) === ".kaosignore") {
      for (const bundle of this.targets.bundles) if (dirname(absolute) === bundle.root) bundle.rules = loadRules(bundle.root);
    }
    // Directories come and go with their files; only files and removals count.
    if (event === "addDir") return;
    this.pending.push(absolute);
    this.machine.dispatch("change");
  }

  private retarget(): void {
    const next = watchTargets(this.loaded?.config, this.loaded?.stack, this.configFile, this.options.stackName);
    const before = new Set(this.targets.paths);
    const after = new Set(next.paths);
    this.targets = next;
    const added = next.paths.filter((path) => !before.has(path));
    const removed = [...before].filter((path) => !after.has(path));
    if (this.watcher) {
      if (removed.length > 0) this.watcher.unwatch(removed);
      if (added.length > 0) this.watcher.add(added);
      this.links.update(next.paths);
    }
    if (added.length > 0 || removed.length > 0) this.print(`watching ${plural(next.paths.length, "path")} in ${displayText(next.root)}`);
  }

  /** Loads the config again; on failure prints the error as `kaos up` would and keeps the last good one. */
  private async reload(): Promise<RunnerSession | undefined> {
    this.configDirty = false;
    try {
      // Loaded by its path, a config that is gone would be told as a --config flag naming a missing file.
      if (!existsSync(this.configFile)) {
        throw new KaosError("CONFIG_NOT_FOUND", `${this.configFile}: removed while watching`, {
          hint: "put it back to resume: kaos watch goes on watching for it",
        });
      }
      const { config, stack } = await loadProject({
        cwd: this.options.cwd,
        configPath: this.configFile,
        stackName: this.options.stackName,
        // Each reload in a thread of its own, which sees the current text of every module the config imports.
        isolated: true,
      });
      if (stack.name !== this.baseSession.stack.name) {
        throw new KaosError(
          "STACK_INVALID",
          `the stack changed from ${this.baseSession.stack.name} to ${stack.name} while watching; restart kaos watch`,
        );
      }
      const wasBroken = this.configError !== undefined;
      this.configError = undefined;
      const onChange = this.options.onChange ?? config.watch.onChange;
      const runStack = watchedStack(stack, onChange);
      const backend = await createBackend({ config, stack: runStack, state: this.baseSession.state });
      this.session = runnerSession({ ...this.baseSession, config, stack: runStack, backend }, "kaos watch");
      if (this.options.debounce === undefined) this.machine.quietMs = config.watch.debounceMs;
      this.machine.onChange = onChange;
      this.print(wasBroken ? "config reloaded; resuming" : "config reloaded");
      this.loaded = { config, stack };
      this.retarget();
      return this.session;
    } catch (error) {
      this.configError = describeError(error);
      this.printError(error);
      this.print("config invalid; waiting for a fix");
      // The fix may be in a module the config has only just started to import.
      this.retarget();
      return undefined;
    }
  }

  private takePending(): string {
    const paths = [...new Set(this.pending)];
    this.pending = [];
    if (paths.length === 0) return "";
    const first = relative(this.targets.root, paths[0]!) || paths[0]!;
    return ` (${displayText(first)}${paths.length > 1 ? ` and ${paths.length - 1} more` : ""})`;
  }

  // ------------------------------------------------------------- running

  /** One run: reload if needed, apply, report; then tell the machine. */
  private async runCycle(): Promise<void> {
    // Leave the machine's dispatch before doing anything.
    await Promise.resolve();
    let waiting = true;
    try {
      waiting = await this.runOnce();
    } catch (error) {
      this.printError(error);
      this.lastOutcome = `failed: ${describeError(error).split("\n")[0] ?? "error"}`;
    }
    this.current = undefined;
    if (!this.stopping) {
      this.machine.dispatch("run-ended");
      if (waiting && this.machine.state === "idle") this.print("waiting for changes");
    }
    this.drawStatus();
  }

  /** Returns false when it already told the user what it waits for. */
  private async runOnce(): Promise<boolean> {
    const trigger = this.firstRun ? "" : this.takePending();
    let session = this.session;
    if (this.configDirty || this.configError !== undefined || session === undefined) session = await this.reload();
    if (session === undefined || this.stopping) return false;
    const first = this.firstRun;
    this.firstRun = false;
    const reporter = new WatchReporter(
      this.terminal,
      (job) => this.checkStale(job),
      () => this.drawStatus(),
    );
    const current: CurrentRun = {
      reporter,
      backend: session.backend.runner,
      wanted: undefined,
      cancelledForRestart: 0,
      announcedQueue: false,
    };
    this.current = current;
    this.drawStatus();
    // Why the plan was not run: nothing changed, or only what just failed, unchanged.
    let skipped: "nothing" | "failed" | undefined;
    const outcome = await apply(session, {
      command: "watch",
      reporter,
      signal: this.quit.signal,
      force: first && this.options.force === true,
      locked: true,
      skip: (plan) => {
        if (!first && !plan.changes) {
          this.print(`change detected: ${planSummary(plan)}${trigger}`);
          skipped = "nothing";
        } else if (!first && this.failed.size > 0) {
          const items = [...runItems(plan).values()].flat();
          if (items.length > 0 && items.every((item) => this.failed.has(item))) skipped = "failed";
        }
        return skipped !== undefined;
      },
      onPlan: (plan) => {
        this.machine.dispatch("planned");
        this.print(first ? `initial run: ${planSummary(plan)}` : `change detected: ${planSummary(plan)}${trigger}`);
      },
    });
    if (outcome.skipped) {
      if (skipped === "failed") this.print("unchanged since the failure; waiting for an edit");
      return skipped !== "failed";
    }
    const result = outcome.result;
    if (result.cancelled) {
      this.print(`run ${outcome.runId} cancelled`);
      this.lastOutcome = "last run cancelled";
    } else if (current.cancelledForRestart > 0) {
      this.print(`run ${outcome.runId} restarted: ${plural(current.cancelledForRestart, "job")} cancelled because their inputs changed`);
      this.failed = failedItems(outcome.plan, result);
      this.lastOutcome = "restarting";
    } else if (result.succeeded) {
      const jobs = result.pipelines.flatMap((p) => p.jobs);
      const reused = jobs.filter((job) => job.reused).length;
      this.print(`run ${outcome.runId} succeeded: ${jobs.length - reused} ran, ${reused} reused`);
      this.failed = new Set();
      this.lastOutcome = "last run succeeded";
    } else {
      const reason = failureReason(result);
      this.print(`run ${outcome.runId} failed: ${reason}`);
      this.failed = failedItems(outcome.plan, result);
      this.lastOutcome = `failed: ${reason}`;
    }
    return true;
  }

  /** Restart mode: edits settled during a run; cancel what they made stale. */
  private async restartCheck(): Promise<void> {
    if (this.checking) {
      this.checkAgain = true;
      return;
    }
    this.checking = true;
    try {
      do {
        this.checkAgain = false;
        const run = this.current;
        if (run === undefined || this.stopping) return;
        let session = this.session;
        if (this.configDirty || this.configError !== undefined || session === undefined) session = await this.reload();
        if (session === undefined) {
          this.print("change during the run: rerun queued");
          continue;
        }
        const next = await planSession(session);
        // The run may have ended while we planned: the queued run plans for itself.
        if (this.current !== run || this.stopping) return;
        run.wanted = wantedKeys(next);
        let stale = 0;
        let kept = 0;
        run.backend.cancel(STALE_REASON, (job) => {
          const isStale = !run.wanted!.has(jobItem(job));
          if (isStale) stale += 1;
          else kept += 1;
          return isStale;
        });
        run.cancelledForRestart += stale;
        this.print(
          stale > 0
            ? `change during the run: cancelling ${plural(stale, "job")} whose inputs changed, ${kept} keep running; rerun queued`
            : "change during the run: rerun queued",
        );
      } while (this.checkAgain);
    } finally {
      this.checking = false;
    }
  }

  /** A job the current run starts after the latest plan dropped its key is cancelled at once. */
  private checkStale(job: JobRecord): void {
    const run = this.current;
    if (run?.wanted === undefined || (job.state !== "queued" && job.state !== "running")) return;
    if (run.wanted.has(jobItem(job))) return;
    // The backend registers a job right after announcing it.
    queueMicrotask(() => {
      let hit = 0;
      run.backend.cancel(STALE_REASON, (candidate) => {
        const match = candidate.id === job.id;
        if (match) hit += 1;
        return match;
      });
      run.cancelledForRestart += hit;
    });
  }

  // ------------------------------------------------------------- lifecycle

  async run(): Promise<number> {
    const stopKeys = this.listenForQuit();
    this.stopListening = stopKeys;
    try {
      await this.startWatcher();
      this.monitor = await this.startMonitor();
      this.print(
        `watching ${plural(this.targets.paths.length, "path")} in ${displayText(this.targets.root)} (debounce ${this.machine.quietMs} ms, on change: ${this.machine.onChange}, ${this.describeMode()}); q then Enter or Ctrl-C quits`,
      );
      if (this.configError !== undefined) {
        this.print("config invalid; waiting for a fix");
        this.drawStatus();
      } else {
        this.machine.dispatch("start");
      }
      if (!this.stopping) await new Promise<void>((done) => (this.finished = done));
      return 0;
    } finally {
      stopKeys();
      this.machine.stop();
      this.links.close();
      await this.watcher?.close();
      await this.monitor?.close();
      while (this.tasks.size > 0) await Promise.allSettled([...this.tasks]);
      this.terminal.close();
    }
  }

  private requestStop(why: StopReason | "quit"): void {
    this.stopReason = why;
    this.machine.dispatch("quit");
  }

  /** Quit while the run plans: exit at once, as `kaos up` does. */
  private abandonPlan(): void {
    this.stopListening?.();
    void this.monitor?.close();
    exitWhilePlanning(this.stopReason, { view: () => this.terminal.close(), store: () => this.baseSession.close() });
  }

  /** Quit otherwise: cancel the running jobs, let the run record them, then return from run(). */
  private stopRuns(): void {
    const why = this.stopReason;
    if (this.terminal.interactive) this.terminal.line(this.c.dim(why));
    this.print(this.current ? "stopping: cancelling running jobs" : "stopping");
    this.quit.abort(new KaosError("JOBS_FAILED", "interrupted"));
    void Promise.allSettled([...this.tasks]).then(() => {
      this.print("stopped");
      this.finished?.();
    });
  }

  /** Ctrl-C, SIGTERM, and `q` on stdin. Returns the function that stops listening. */
  private listenForQuit(): () => void {
    const stopListening = onStopRequest((why) => this.requestStop(why));
    const stdin = process.stdin;
    const raw = stdin.isTTY === true && typeof stdin.setRawMode === "function";
    let buffered = "";
    const onData = (chunk: Buffer | string) => {
      const text = chunk.toString();
      if (raw) {
        if (text.includes("\u0003")) this.requestStop("interrupted");
        else if (/q/i.test(text)) this.requestStop("quit");
        return;
      }
      buffered += text;
      const lines = buffered.split("\n");
      buffered = lines.pop() ?? "";
      if (lines.some((line) => line.trim().toLowerCase() === "q")) this.requestStop("quit");
    };
    const onError = () => {};
    try {
      if (raw) stdin.setRawMode(true);
      stdin.on("data", onData);
      stdin.on("error", onError);
      stdin.resume();
    } catch {
      // No usable stdin: signals still quit.
    }
    return () => {
      stopListening();
      stdin.off("data", onData);
      try {
        if (raw) stdin.setRawMode(false);
        stdin.pause();
        // A paused pipe still holds the event loop open.
        (stdin as { unref?: () => void }).unref?.();
      } catch {
        // already closed
      }
    };
  }
}

/** `kaos watch`: see the top of this file. Returns the exit status (0 after a clean quit). */
export async function watch(options: WatchCommandOptions): Promise<number> {
  let loaded: { config: ResolvedConfig; stack: ResolvedStack } | undefined;
  let configError: unknown;
  try {
    loaded = await loadProject({ cwd: options.cwd, configPath: options.configPath, stackName: options.stackName });
  } catch (error) {
    // A config or stack that exists but does not load is watched until it does; anything else ends here.
    if (!isKaosError(error) || !["CONFIG_INVALID", "CONFIG_LOAD", "HYPERPARAMS_INVALID", "STACK_INVALID"].includes(error.code)) throw error;
    configError = error;
  }
  const configFile =
    loaded?.config.file ?? (options.configPath !== undefined ? resolve(options.cwd, options.configPath) : findConfig(options.cwd));
  if (configFile === undefined || !existsSync(configFile))
    throw configError ?? new KaosError("CONFIG_NOT_FOUND", "no config file to watch");
  if (loaded !== undefined) {
    // Asked of a read-only store, so a stack kaos watch cannot run leaves no .kaos/ behind.
    const probe = await openSession(loaded.config, loaded.stack, createBackend, { readonly: true });
    try {
      runnerSession(probe, "kaos watch", "run `kaos up --stack NAME` for a cluster stack");
    } finally {
      probe.close();
    }
  }
  // Without a loadable config the state store and lock still need a project: a placeholder one.
  const project = loaded ?? {
    config: {
      file: configFile,
      root: dirname(configFile),
      workspace: "kaos",
      pipelines: [],
      watch: WATCH_DEFAULTS,
    },
    stack: { name: options.stackName ?? "local", file: undefined, config: { backend: "local" as const } },
  };
  const runStack = watchedStack(project.stack, options.onChange ?? project.config.watch.onChange);
  const base = runnerSession(await openSession(project.config, runStack, createBackend), "kaos watch");
  let lock: { release(): void } | undefined;
  try {
    lock = base.state.acquireWriter(project.stack.name, "watch");
    const session = new WatchSession(options, loaded, configError === undefined ? undefined : describeError(configError), base, configFile);
    if (configError !== undefined) {
      const c = colors(process.stderr);
      const error = configError as KaosError;
      process.stderr.write(`${c.red("error")}: ${displayMessage(error.message)}\n`);
      if (error.hint) process.stderr.write(`${c.dim("hint")}: ${displayMessage(error.hint)}\n`);
    }
    return await session.run();
  } finally {
    lock?.release();
    base.close();
  }
}

/**
 * `--on-change queue` lets a run finish on the data it started with while the
 * bundle is edited. Where data views would link to the bundle's own files (a
 * file system without clones), an edit in place would reach the running job
 * and fail it; so a local stack that did not choose gets copies kaos owns.
 */
function watchedStack(stack: ResolvedStack, onChange: "restart" | "queue"): ResolvedStack {
  if (onChange !== "queue" || stack.config.backend !== "local" || stack.config.dataViews !== undefined) return stack;
  return { ...stack, config: { ...stack.config, dataViews: "copy" } };
}
