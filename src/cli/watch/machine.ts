/**
 * The watch state machine: idle, debouncing, planning, running, queued while
 * planning or running, and stopping (see session.ts for the transitions).
 * Every transition is in `dispatch`, and timers are its only clock, so tests
 * drive it with fake timers.
 */
export type WatchState = "idle" | "debouncing" | "planning" | "planning-queued" | "running" | "queued" | "stopping";
export type WatchEvent = "start" | "change" | "quiet" | "planned" | "run-ended" | "quit";

export interface WatchMachineHooks {
  /** Start a run; it must report its end with `dispatch("run-ended")`, never synchronously. */
  startRun(): void;
  /** Edits settled while a run goes on: restart mode cancels what they made stale, queue mode only says so. */
  settledDuringRun(mode: "restart" | "queue"): void;
  /** Quit while a run plans: nothing has started and nothing is recorded yet, so the plan is dropped and kaos exits at once. */
  abandonPlan(): void;
  /** Quit otherwise: cancel what runs, record it, then exit. */
  stopRuns(): void;
  /** Quit again while stopping: exit at once. */
  stopAtOnce(): void;
  /** Every change of state, for the status line. */
  entered?(state: WatchState): void;
}

/** The watch loop's states and transitions, in one place. */
export class WatchMachine {
  state: WatchState = "idle";
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly hooks: WatchMachineHooks,
    public quietMs: number,
    public onChange: "restart" | "queue",
  ) {}

  dispatch(event: WatchEvent): void {
    const from = this.state;
    if (from === "stopping") {
      if (event === "quit") this.hooks.stopAtOnce();
      return;
    }
    switch (event) {
      case "start":
        if (from === "idle") this.enter("planning", () => this.hooks.startRun());
        break;
      case "change":
        this.armTimer();
        if (from === "idle") this.enter("debouncing");
        else if (from === "planning") this.enter("planning-queued");
        else if (from === "running") this.enter("queued");
        break;
      case "quiet":
        this.timer = undefined;
        if (from === "debouncing") this.enter("planning", () => this.hooks.startRun());
        else if (from === "queued" || from === "planning-queued") this.hooks.settledDuringRun(this.onChange);
        break;
      case "planned":
        if (from === "planning") this.enter("running");
        else if (from === "planning-queued") this.enter("queued");
        break;
      case "run-ended":
        // A run may end without a plan to run (nothing changed, or the config does not load).
        if (from === "running" || from === "planning") this.enter("idle");
        else if (from === "queued" || from === "planning-queued") {
          if (this.timer !== undefined) this.enter("debouncing");
          else this.enter("planning", () => this.hooks.startRun());
        }
        break;
      case "quit":
        this.stop();
        if (from === "planning" || from === "planning-queued") this.enter("stopping", () => this.hooks.abandonPlan());
        else this.enter("stopping", () => this.hooks.stopRuns());
        break;
    }
  }

  /** Stops the timer for good (quitting). */
  stop(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
  }

  private enter(state: WatchState, then?: () => void): void {
    this.state = state;
    this.hooks.entered?.(state);
    then?.();
  }

  private armTimer(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = setTimeout(() => this.dispatch("quiet"), this.quietMs);
  }
}
