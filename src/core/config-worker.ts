/**
 * The thread a config or stack module is evaluated in when the process
 * evaluates it more than once (see `evaluateInThread` in config.ts): it
 * answers once, and ends with every module the config loaded.
 */
import { parentPort, workerData } from "node:worker_threads";
import { isPlainData } from "./config-cache.js";
import { type ConfigThreadAnswer, type ConfigThreadQuestion, evaluatedValue } from "./config.js";
import { describeError, isKaosError } from "./errors.js";

async function answer({ kind, file }: ConfigThreadQuestion): Promise<ConfigThreadAnswer> {
  try {
    const value = await evaluatedValue(kind, file);
    return isPlainData(value) ? { value } : { notPlainData: true };
  } catch (error) {
    if (isKaosError(error)) return { error: { code: error.code, message: error.message, hint: error.hint } };
    return { unexpected: describeError(error) };
  }
}

if (parentPort !== null) parentPort.postMessage(await answer(workerData as ConfigThreadQuestion));
