/**
 * The defaults kaos applies where the config, a stack or a flag is silent:
 * one place, so the config loader, the commands and the docs agree.
 */
import type { WatchOptions } from "./types.js";

/** `watch` in kaos.config.ts when it is left out (and for `train deploy` projects, which have no config). */
export const WATCH_DEFAULTS: Required<WatchOptions> = { debounceMs: 200, onChange: "restart" };

/** The longest quiet time `kaos watch` takes: a Node timer holds no more (about 24.8 days), and fires at once past it. */
export const MAX_DEBOUNCE_MS = 2_147_483_647;

/** The stack used when `--stack` is not given. */
export const DEFAULT_STACK_NAME = "local";

/** How long a state store write waits for another kaos's transaction before it gives up. */
export const BUSY_TIMEOUT_MS = 10_000;
