/**
 * The watch state machine: idle, debouncing, running, queued (see session.ts
 * for the transitions). Every transition is in `dispatch`, and timers are its
 * only clock, so tests drive it with fake timers.
 */
export type WatchState = "idle" | "debouncing" | "running" | "queued";
export type WatchEvent = "start" | "change" | "quiet" | "run-ended";

export interface WatchMachineHooks {
  /** Start a run; it must report its end with `dispatch("run-ended")`, never synchronously. */
  startRun(): void;
  /** Edits settled while a run goes on: restart mode cancels what they made stale, queue mode only says so. */
  settledDuringRun(mode: "restart" | "queue"): void;
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
    switch (event) {
      case "start":
        if (from === "idle") this.enter("running", () => this.hooks.startRun());
        break;
      case "change":
        this.armTimer();
        if (from === "idle") this.enter("debouncing");
        else if (from === "running") this.enter("queued");
        break;
      case "quiet":
        this.timer = undefined;
        if (from === "debouncing") this.enter("running", () => this.hooks.startRun());
        else if (from === "queued") this.hooks.settledDuringRun(this.onChange);
        break;
      case "run-ended":
        if (from === "running") this.enter("idle");
        else if (from === "queued") {
          if (this.timer !== undefined) this.enter("debouncing");
          else this.enter("running", () => this.hooks.startRun());
        }
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
