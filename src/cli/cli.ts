#!/usr/bin/env node
/**
 * The `kaos` command's entry. It turns on Node's compile cache before
 * anything else loads, then loads the command line itself (program.ts): every
 * start after the first then takes the compiled code of kaos and its
 * libraries from the cache instead of compiling them again, a good part of
 * what a no-op `kaos up` costs. The import must be dynamic: the modules a
 * static import names are compiled before this module's body runs.
 */
import { enableCompileCache, registerHooks } from "node:module";
import { homedir, platform } from "node:os";
import { join } from "node:path";

/** The per-user cache folder of the OS, as other tools use it. */
function userCacheDir(): string {
  const env = process.env;
  if (platform() === "win32") return env["LOCALAPPDATA"] ?? join(homedir(), "AppData", "Local");
  if (platform() === "darwin") return join(homedir(), "Library", "Caches");
  return env["XDG_CACHE_HOME"] || join(homedir(), ".cache");
}

// NODE_COMPILE_CACHE, when set, has turned it on already (there), and NODE_DISABLE_COMPILE_CACHE keeps it off.
if (process.env["NODE_COMPILE_CACHE"] === undefined) {
  try {
    enableCompileCache?.(join(userCacheDir(), "kaos", "compile-cache"));
  } catch {
    // A cache that cannot be made (a read-only home) only makes starting slower.
  }
}

/**
 * kaos's own modules import each other by relative paths inside one folder
 * (dist/, see scripts/build.mjs). Node's resolver would check each such path on
 * disk, resolve symlinks and read package.json scopes to learn the format,
 * for every module of every start; they are ES modules next to this one.
 */
const ownFolder = new URL("./", import.meta.url).href;
registerHooks?.({
  resolve(specifier, context, nextResolve) {
    if (specifier.startsWith("./") && specifier.endsWith(".js") && context.parentURL?.startsWith(ownFolder) === true) {
      const url = new URL(specifier, context.parentURL).href;
      if (url.startsWith(ownFolder) && !url.slice(ownFolder.length).includes("/")) return { url, format: "module", shortCircuit: true };
    }
    return nextResolve(specifier, context);
  },
});

/**
 * A `kaos up` first asks whether the last one that had nothing to do still
 * vouches for this one (up-from-record.ts): then it is done without loading
 * the command line at all.
 */
const status = process.argv[2] === "up" ? (await import("./up-from-record.js")).upFromRecord() : undefined;
if (status === undefined) await import("./program.js");
else process.exitCode = status;
